"""TF Serving's REST API (its port 8501) for the local stand-in, over the gRPC path's handlers.

    GET  /v1/models/NAME[/versions/N|/labels/L]             model status (GetModelStatus)
    GET  /v1/models/NAME[/versions/N|/labels/L]/metadata    signatures (GetModelMetadata)
    POST /v1/models/NAME[/versions/N|/labels/L]:predict     {"instances": [...]} or {"inputs": ...}
    POST /v1/models/NAME[/versions/N|/labels/L]:classify    {"examples": [{feature: value}], ...}
    POST /v1/models/NAME[/versions/N|/labels/L]:regress     the same

Every request is turned into the gRPC request proto and answered by the same
handler the gRPC server runs (`local_server.run_handler`), so REST and gRPC
give the same results, status codes and messages; a status code becomes an
HTTP status (`HTTP_STATUS`) and the message `{"error": "<message>"}`.

JSON values of a Predict input are typed by the signature (strings, or
`{"b64": "..."}` for bytes, where it takes DT_STRING; numbers where it takes a
number). Classify and Regress features become tf.Example features by their
JSON type: integers int64_list, numbers with a fraction (or lists mixing them
with integers) float_list, strings and `{"b64": ...}` bytes_list.

Malformed HTTP (no JSON, a body that is not an object, an unknown path, a
wrong method, no Content-Length, a body over `max_body_bytes`, a client that
stops sending) gets a JSON error and a 4xx status; the connection is closed
after such errors, and a slow client times out after `timeout` seconds.
"""

from __future__ import annotations

import base64
import binascii
import http.server
import json
import logging
import re
import threading
import time
import urllib.parse

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_pb2, predict_pb2, regression_pb2)

from serving.local_server import MAX_MESSAGE_BYTES, ModelService, PredictionService, run_handler
from serving.validation import RequestError, check_input_names, check_rows, invalid

log = logging.getLogger("serving.rest")

# gRPC status code -> HTTP status, as TF Serving maps them (its http_server.cc, as remembered).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}   # anything else (INTERNAL, UNKNOWN, DATA_LOSS, CANCELLED): 500

_PATH = re.compile(r"/v1/models/(?P<name>[^/:]+)"
                   r"(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
                   r"(?P<tail>/metadata|:predict|:classify|:regress)?")
_METHODS = {None: "GET", "/metadata": "GET", ":predict": "POST", ":classify": "POST",
            ":regress": "POST"}
_INT64 = (-2 ** 63, 2 ** 63 - 1)


class HttpError(Exception):
    """An HTTP-level refusal (no route, wrong method, bad body): status and message."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


# --- JSON -> tensors and tf.Examples -------------------------------------------------------------

def _bytes_value(value) -> bytes | None:
    """The bytes of a JSON string (UTF-8) or of a `{"b64": "..."}` object; None for others."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error as error:
            raise invalid(f"not valid base64 in a {{\"b64\": ...}} value: {error}") from None
    return None


def _is_b64(value) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _integer(value):
    """A JSON integer within int64, else None."""
    ok = isinstance(value, int) and not isinstance(value, bool) and \
        _INT64[0] <= value <= _INT64[1]
    return value if ok else None


def _number(value):
    """A JSON number (integer or not) as a float, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:       # an integer beyond any float
        return None


def _boolean(value):
    return value if isinstance(value, bool) else None


def _leaf_kind(dtype: tf.DType):
    """(converter of one JSON leaf, what it takes) for a signature input's dtype."""
    if dtype == tf.string:
        return _bytes_value, 'strings or {"b64": ...} objects'
    if dtype == tf.bool:
        return _boolean, "true or false"
    if dtype.is_integer:
        return _integer, "integers"
    if dtype.is_floating:
        return _number, "numbers"
    raise invalid(f"inputs of dtype {dtype.name} cannot be given in JSON")


def _leaves(value, convert, what: str):
    """`value` (a JSON scalar or nested lists) with each leaf converted by `convert`;
    INVALID_ARGUMENT naming `what` for a leaf it refuses."""
    if isinstance(value, list):
        return [_leaves(v, convert, what) for v in value]
    converted = convert(value)
    if converted is None:
        raise invalid(f"{what}; got {json.dumps(value)[:80]}")
    return converted


def json_tensor(key: str, value, info) -> tensor_pb2.TensorProto:
    """A JSON value (scalar or nested lists of one shape) as a TensorProto of the signature
    input `info`'s dtype; INVALID_ARGUMENT naming `key` for a wrong type or a ragged list."""
    dtype = tf.as_dtype(info.dtype)
    convert, takes = _leaf_kind(dtype)
    ragged = invalid(f"input '{key}' is a ragged list; every row must have the same shape")
    try:
        leaves = _leaves(value, convert, f"input '{key}' ({dtype.name}) takes {takes}")
        array = np.array(leaves, dtype=object if dtype == tf.string else dtype.as_numpy_dtype)
    except RecursionError:
        raise invalid(f"input '{key}' is nested too deep") from None
    except OverflowError:
        raise invalid(f"input '{key}' has a value out of range for {dtype.name}") from None
    except ValueError:      # ragged, or more dimensions than numpy has
        raise ragged from None
    if array.dtype == object and any(isinstance(v, list) for v in array.reshape(-1)):
        raise ragged
    return tf.make_tensor_proto(array, dtype=dtype)


def predict_columns(body: dict, inputs: dict) -> tuple[dict, bool]:
    """The request's inputs as {input name: JSON value with the rows first}, and whether they
    came in the row format ("instances") rather than the columnar one ("inputs").

    A row is an object naming each input, or a bare value when the signature has one input;
    the columnar "inputs" is such an object or bare value for all rows at once.
    """
    if ("instances" in body) == ("inputs" in body):
        raise invalid("the request needs exactly one of 'instances' (row format) or 'inputs' "
                      "(columnar format)")
    only = next(iter(inputs)) if len(inputs) == 1 else None
    if "inputs" in body:
        given = body["inputs"]
        if isinstance(given, dict) and not _is_b64(given):
            return given, False
        if only is None:
            raise invalid(f"the signature has {len(inputs)} inputs ({', '.join(sorted(inputs))}); "
                          "give 'inputs' as an object naming each")
        return {only: given}, False
    instances = body["instances"]
    if not isinstance(instances, list):
        raise invalid("'instances' must be a list with one entry per row")
    if not instances:           # no rows: every input empty, refused as gRPC refuses it
        return {key: [] for key in inputs}, True
    named = [isinstance(i, dict) and not _is_b64(i) for i in instances]
    if not any(named):
        if only is None:
            raise invalid(f"the signature has {len(inputs)} inputs ({', '.join(sorted(inputs))}); "
                          "give each instance as an object naming them")
        return {only: instances}, True
    if not all(named):
        raise invalid("'instances' mixes objects with bare values")
    keys = set(instances[0])
    for index, instance in enumerate(instances):
        if set(instance) != keys:
            raise invalid(f"instances[{index}] names inputs {sorted(instance)}, instances[0] "
                          f"names {sorted(keys)}; every instance must name the same inputs")
    return {key: [instance[key] for instance in instances] for key in keys}, True


def _feature(name: str, value, where: str) -> tf.train.Feature:
    """A JSON value or list of values as a tf.Example feature, typed by its JSON type."""
    values = value if isinstance(value, list) else [value]
    what = f"feature '{name}' of {where}"
    if not values:
        raise invalid(f"{what} is an empty list")
    texts = [_bytes_value(v) for v in values]
    if all(t is not None for t in texts):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=texts))
    integers = [_integer(v) for v in values]
    if all(i is not None for i in integers):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=integers))
    numbers = [_number(v) for v in values]
    if all(n is not None for n in numbers):
        return tf.train.Feature(float_list=tf.train.FloatList(value=numbers))
    raise invalid(f"{what} must be integers, numbers, or strings ({{\"b64\": ...}} for bytes), "
                  f"one kind per feature; got {json.dumps(value)[:80]}")


def json_example(features, where: str) -> tf.train.Example:
    """{feature name: JSON value or list} as a tf.Example."""
    if not isinstance(features, dict):
        raise invalid(f"{where} must be an object of feature name to value(s)")
    example = tf.train.Example()
    for name, value in features.items():
        example.features.feature[name].CopyFrom(_feature(name, value, where))
    return example


def fill_examples_input(body: dict, request_input, max_batch_size: int) -> None:
    """A Classify/Regress request's `input` from {"examples": [...], "context": {...}}."""
    examples = body.get("examples")
    if not isinstance(examples, list):
        raise invalid("the request needs 'examples', a list of objects of feature values")
    check_rows(len(examples), max_batch_size)
    if "context" in body:
        target = request_input.example_list_with_context
        target.context.CopyFrom(json_example(body["context"], "context"))
        shared = set(body["context"])
    else:
        target, shared = request_input.example_list, set()
    for index, features in enumerate(examples):
        example = json_example(features, f"examples[{index}]")
        both = sorted(shared & set(example.features.feature))
        if both:
            raise invalid(f"feature(s) {both} are in both context and examples[{index}]")
        target.examples.add().CopyFrom(example)


# --- tensors and protos -> JSON ------------------------------------------------------------------

def _json_value(value, name: str):
    """One output value for JSON: bytes as text, or {"b64": ...} when the output's name ends
    with "_bytes" (TF Serving's rule) or the bytes are not UTF-8."""
    if isinstance(value, bytes):
        if not name.endswith("_bytes"):
            try:
                return value.decode()
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, list):
        return [_json_value(v, name) for v in value]
    return value


def json_outputs(response: predict_pb2.PredictResponse) -> dict:
    """output name -> its tensor as JSON (nested lists, rows first)."""
    return {name: _json_value(tf.make_ndarray(proto).tolist(), name)
            for name, proto in response.outputs.items()}


def rows_of(outputs: dict) -> list:
    """Row-format predictions: a list of per-row objects, or of bare values for one output."""
    lengths = {name: len(value) if isinstance(value, list) else None
               for name, value in outputs.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
        raise invalid(f"the outputs have no common row count ({lengths}); ask in the columnar "
                      "format ('inputs') instead")
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    rows = next(iter(lengths.values()))
    return [{name: value[row] for name, value in outputs.items()} for row in range(rows)]


def _proto_json(message) -> dict:
    """A proto as TF Serving writes it: field names as in the .proto, defaults included."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


# --- the API -------------------------------------------------------------------------------------

def _model_spec(match: re.Match, signature: str = "") -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=urllib.parse.unquote(match["name"]), signature_name=signature)
    if match["version"] is not None:
        version = int(match["version"])
        if version > _INT64[1]:
            raise invalid(f"version {match['version']} is not a 64-bit integer")
        spec.version.value = version
    elif match["label"] is not None:
        spec.version_label = urllib.parse.unquote(match["label"])
    return spec


class RestApi:
    """Routes a REST request to the gRPC services' handlers; no HTTP here.

    `answer(method, path, body)` returns (HTTP status, JSON object, extra headers).
    """

    def __init__(self, predictions: PredictionService, models: ModelService):
        self.predictions = predictions
        self.models = models

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict, dict]:
        try:
            return 200, self._route(method, path, body), {}
        except RequestError as error:
            return HTTP_STATUS.get(error.code, 500), {"error": str(error)}, {}
        except HttpError as error:
            return error.status, {"error": str(error)}, error.headers
        except Exception:   # a fault in this module, never the caller's: as run_handler does
            log.exception("internal error answering %s %s", method, path)
            return 500, {"error": f"Internal error in the server while answering {method} "
                                  f"{path}; the server's log has the details."}, {}

    def _route(self, method: str, path: str, body: bytes) -> dict:
        match = _PATH.fullmatch(urllib.parse.urlsplit(path).path)
        if match is None:
            if path.startswith("/v1/models/"):
                raise invalid(f"Malformed request: {method} {path}")
            raise HttpError(404, f"Not found: {method} {path}; TF Serving's REST API is under "
                                 "/v1/models/NAME")
        allowed = _METHODS[match["tail"]]
        if method != allowed:
            raise HttpError(405, f"{method} is not allowed on {path}; use {allowed}",
                            {"Allow": allowed})
        if match["tail"] is None:
            return self.status(match)
        if match["tail"] == "/metadata":
            return self.metadata(match)
        request = parse_body(body)
        return {":predict": self.predict, ":classify": self.classify,
                ":regress": self.regress}[match["tail"]](match, request)

    def status(self, match) -> dict:
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=_model_spec(match))
        return _proto_json(run_handler(self.models.status, request))

    def metadata(self, match) -> dict:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=_model_spec(match), metadata_field=["signature_def"])
        response = run_handler(self.predictions.metadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return {"model_spec": _proto_json(response.model_spec),
                "metadata": {"signature_def": _proto_json(signatures)}}

    def predict(self, match, body: dict) -> dict:
        request = predict_pb2.PredictRequest(model_spec=_model_spec(match, _signature_name(body)))
        inputs = run_handler(self.predictions.signature_inputs, request)
        columns, row_format = predict_columns(body, inputs)
        check_input_names(inputs, columns)
        for key, value in columns.items():
            if isinstance(value, list):
                check_rows(len(value), self.predictions.max_batch_size, f"input '{key}'")
            request.inputs[key].CopyFrom(json_tensor(key, value, inputs[key]))
        outputs = json_outputs(run_handler(self.predictions.predict, request))
        if row_format:
            return {"predictions": rows_of(outputs)}
        return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}

    def classify(self, match, body: dict) -> dict:
        request = classification_pb2.ClassificationRequest(
            model_spec=_model_spec(match, _signature_name(body)))
        fill_examples_input(body, request.input, self.predictions.max_batch_size)
        result = run_handler(self.predictions.classify, request).result
        return {"result": [[[c.label, c.score] for c in row.classes]
                           for row in result.classifications]}

    def regress(self, match, body: dict) -> dict:
        request = regression_pb2.RegressionRequest(
            model_spec=_model_spec(match, _signature_name(body)))
        fill_examples_input(body, request.input, self.predictions.max_batch_size)
        result = run_handler(self.predictions.regress, request).result
        return {"result": [r.value for r in result.regressions]}


def parse_body(body: bytes) -> dict:
    """The request body as a JSON object; INVALID_ARGUMENT when it is not one."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError) as error:   # UnicodeDecodeError is a ValueError
        raise invalid(f"JSON Parse error: {error}") from None
    if not isinstance(parsed, dict):
        raise invalid(f"the request body must be a JSON object, not {type(parsed).__name__}")
    return parsed


def _signature_name(body: dict) -> str:
    name = body.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid("'signature_name' must be a string")
    return name


# --- HTTP ----------------------------------------------------------------------------------------

def _json_bytes(payload: dict) -> bytes:
    """JSON text; NaN and infinities written as NaN and Infinity, as TF Serving writes them."""
    return json.dumps(payload, allow_nan=True).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    """One connection: HTTP/1.1 keep-alive, a JSON answer to everything."""

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"   # so even an unparsable request line gets a status line
    server_version = "funnelstack-stand-in"
    timeout = 30.0                  # seconds a client may stay silent (set by RestServer)
    api: RestApi                    # set by RestServer
    max_body_bytes: int = MAX_MESSAGE_BYTES
    tracker: "_InFlight"

    def _send(self, status: int, payload: dict, headers: dict | None = None,
              close: bool = False) -> None:
        data = _json_bytes(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a bad request line, headers too long, an unknown
        method) as JSON too; the connection is closed after them."""
        self._send(code, {"error": message or explain or self.responses.get(code, ("",))[0]},
                   close=True)

    def _body(self) -> bytes | None:
        """The request body; None after answering a refusal (411, 413, 408, 400)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._send(411, {"error": "chunked request bodies are not supported; send "
                                      "Content-Length"}, close=True)
            return None
        length = self.headers.get("Content-Length")
        if length is None:
            if self.command == "POST":
                self._send(411, {"error": "a POST needs a Content-Length header"}, close=True)
                return None
            return b""
        if not length.strip().isdigit():
            self._send(400, {"error": f"Content-Length {length!r} is not a number"}, close=True)
            return None
        if int(length) > self.max_body_bytes:
            self._send(413, {"error": f"the body has {int(length)} bytes, more than the "
                                      f"server's limit of {self.max_body_bytes}"}, close=True)
            return None
        body = self._read(int(length))
        if len(body) < int(length):
            self._send(408, {"error": f"the body ended after {len(body)} of {length} bytes "
                                      f"(or nothing came for {self.timeout:g} s)"}, close=True)
            return None
        return body

    def _read(self, length: int) -> bytes:
        """Up to `length` body bytes: fewer when the client closes or stays silent too long."""
        parts, remaining = [], length
        try:
            while remaining:
                chunk = self.rfile.read1(min(remaining, 1 << 20))
                if not chunk:
                    break
                parts.append(chunk)
                remaining -= len(chunk)
        except TimeoutError:
            pass
        return b"".join(parts)

    def _handle(self) -> None:
        with self.tracker:
            body = self._body()
            if body is None:
                return
            status, payload, headers = self.api.answer(self.command, self.path, body)
            self._send(status, payload, headers)   # the body was read whole: keep the connection

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

    def log_message(self, format, *args):   # noqa: A002 (http.server's signature)
        log.debug("%s %s", self.address_string(), format % args)


class _InFlight:
    """Counts requests being answered, so that stop() can wait for them."""

    def __init__(self):
        self._count = 0
        self._idle = threading.Condition()

    def __enter__(self):
        with self._idle:
            self._count += 1

    def __exit__(self, *_):
        with self._idle:
            self._count -= 1
            self._idle.notify_all()

    def wait_idle(self, seconds: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, seconds)


class RestServer:
    """The REST API on its own port, answered by the gRPC server's services; start(), stop()."""

    def __init__(self, predictions: PredictionService, models: ModelService, port: int = 0,
                 host: str = "127.0.0.1", timeout: float = 30.0,
                 max_body_bytes: int = MAX_MESSAGE_BYTES):
        """`port` 0 picks a free port (self.port is the one bound); OSError if it is taken.
        `timeout`: seconds a connection may stay silent mid-request or between requests."""
        self.tracker = _InFlight()
        handler = type("Handler", (_Handler,), {
            "api": RestApi(predictions, models), "timeout": timeout,
            "max_body_bytes": max_body_bytes, "tracker": self.tracker})
        self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True     # idle keep-alive connections never block a stop
        self.port = self.httpd.server_address[1]
        self.address = f"{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="rest-server",
                                        daemon=True)

    def start(self) -> "RestServer":
        self._thread.start()
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stops accepting, waits up to `grace` seconds for requests being answered, closes."""
        started = time.monotonic()
        self.httpd.shutdown()
        self.tracker.wait_idle(max(0.0, grace - (time.monotonic() - started)))
        self.httpd.server_close()
