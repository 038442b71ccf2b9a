"""Clients for models served by TF Serving (or serving.local_server): gRPC and REST.

    client = ServingClient("localhost:8500", "shared_bottom", timeout=2.0)
    outputs = client.predict(serialized_examples)      # {output name: (rows,) array}
    client.status()                                      # [(version, "AVAILABLE"), ...]
    rest = RestClient("http://localhost:8501", "shared_bottom")   # the same calls over REST

`RestClient` sends the same tf.Examples as base64 to :predict, or as JSON
features to :classify and :regress, and returns the same Python values as
`ServingClient` (typed by the signature's output dtypes, read once through
the metadata endpoint). Over REST, INVALID_ARGUMENT and FAILED_PRECONDITION
are both HTTP 400 and come back as INVALID_ARGUMENT; `output_filter` is
applied by the client (TF Serving's REST API has none).

Each call has a deadline (`timeout` seconds per attempt) and is retried with
exponential backoff and jitter while the server answers UNAVAILABLE (a
restarting pod, a connection not yet up); other errors are not retried. Many
rows are sent in requests of `batch_size` rows and the answers joined in
order. `version` pins every request to one model version. Errors come back as
`ServingError` with the status code and a message that says what to check.

Command line (rows from a CSV file with raw feature columns; the feature types
come from the model's predict_raw signature, so no spec file is needed):

    python -m serving.client --target localhost:8500 --model-name shared_bottom predict --csv rows.csv
    python -m serving.client --target localhost:8500 --model-name shared_bottom status
    python -m serving.client --target localhost:8500 --model-name shared_bottom metadata
    python -m serving.client --rest http://localhost:8501 --model-name shared_bottom predict --csv rows.csv
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import random
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Sequence

import grpc
import numpy as np

from serving.export import EXAMPLES_INPUT, RAW_SIGNATURE, SERVING_SIGNATURE

RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
_HINTS = {
    grpc.StatusCode.NOT_FOUND: "check the model name and version; the status command lists "
                               "the loaded versions",
    grpc.StatusCode.INVALID_ARGUMENT: "the request does not fit the model's signature",
    grpc.StatusCode.FAILED_PRECONDITION: "the model has no such signature; the metadata "
                                         "command lists them",
    grpc.StatusCode.UNAVAILABLE: "is the server running and reachable at this address?",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the server did not answer in time; raise --timeout "
                                       "or send smaller batches",
    grpc.StatusCode.INTERNAL: "the server or the model failed, not the request; the "
                              "server's log has the details",
}


class ServingError(RuntimeError):
    """A failed call: `code` is the gRPC status code, the message says what to check."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def with_retries(attempt: Callable, retries: int, backoff: float):
    """attempt()'s result; a ServingError with a RETRYABLE code is retried `retries` times,
    waiting `backoff` seconds (doubling, with jitter) in between; others are raised at once."""
    wait = backoff
    for tried in range(retries + 1):
        try:
            return attempt()
        except ServingError as error:
            if error.code not in RETRYABLE or tried == retries:
                raise
            time.sleep(wait * (0.5 + random.random()))
            wait *= 2
    raise AssertionError("unreachable")


def _error(code: grpc.StatusCode, where: str, details: str) -> ServingError:
    """A ServingError whose message names the model and address, the code, and what to check."""
    hint = _HINTS.get(code, "")
    return ServingError(code, f"{where}: {code.name}: {details}" + (f" ({hint})" if hint else ""))


class _Calls:
    """What the gRPC and REST clients share: batching, waiting, feature types, `with`.

    A subclass has `model_name`, `version`, `batch_size` and `where` (for messages), and
    implements _predict_batch, metadata, status and close.
    """

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def predict(self, examples: Sequence[bytes], signature: str = SERVING_SIGNATURE,
                output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Serialized tf.Examples in; {output name: array with one row per example} out."""
        if len(examples) == 0:
            raise ValueError("predict() needs at least one example")
        parts: dict[str, list] = {}
        for start in range(0, len(examples), self.batch_size):
            batch = list(examples[start:start + self.batch_size])
            for key, array in self._predict_batch(batch, signature, output_filter).items():
                parts.setdefault(key, []).append(array)
        return {key: np.concatenate(chunks) for key, chunks in parts.items()}

    def wait_until_available(self, deadline: float = 60.0) -> int:
        """Polls status() until a version is AVAILABLE; returns that version."""
        until = time.monotonic() + deadline
        while True:
            try:
                available = [v for v, state in self.status() if state == "AVAILABLE"]
                if available and (self.version is None or self.version in available):
                    return self.version or max(available)
            except ServingError as error:
                if error.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
                    raise
            if time.monotonic() > until:
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"{self.model_name} at {self.where}: no version AVAILABLE "
                                   f"after {deadline:g} s")
            time.sleep(0.2)

    def raw_feature_types(self) -> dict[str, str]:
        """feature name -> "string", "int64" or "float", from the predict_raw signature."""
        from tensorflow.core.framework import types_pb2

        signatures = self.metadata()
        if RAW_SIGNATURE not in signatures:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"{self.model_name} has no {RAW_SIGNATURE} signature to read "
                               "feature types from")
        names = {types_pb2.DT_STRING: "string", types_pb2.DT_INT64: "int64",
                 types_pb2.DT_FLOAT: "float"}
        return {name: names[info.dtype] for name, info in signatures[RAW_SIGNATURE].inputs.items()}


def examples_request(kind, model_name: str, signature: str, examples: Sequence[bytes]):
    """A ClassificationRequest or RegressionRequest (`kind`) for `examples` (serialized
    tf.Examples) to `signature` of the newest version of `model_name`."""
    request = kind()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for record in examples:
        request.input.example_list.examples.add().ParseFromString(record)
    return request


@dataclasses.dataclass
class ServingClient(_Calls):
    """PredictionService and ModelService calls for one model.

    Attributes:
      target: host:port of the gRPC endpoint.
      model_name: the served model's name.
      version: pin requests to this version (None: the newest loaded one).
      timeout: deadline of each attempt, in seconds.
      retries: further attempts after an UNAVAILABLE answer.
      backoff: first wait between attempts, in seconds; doubles each time.
      batch_size: rows per request for predict().
      tls_ca: PEM file of the CA that signed the server's certificate; None
        for a plain-text channel.
    """

    target: str
    model_name: str
    version: int | None = None
    timeout: float = 5.0
    retries: int = 3
    backoff: float = 0.1
    batch_size: int = 256
    tls_ca: str | None = None

    def __post_init__(self):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        # round_robin spreads calls over every address the target resolves to (a headless
        # Kubernetes Service lists each ready pod); with one address it changes nothing.
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.lb_policy_name", "round_robin")]
        if self.tls_ca:
            with open(self.tls_ca, "rb") as handle:
                credentials = grpc.ssl_channel_credentials(root_certificates=handle.read())
            self._channel = grpc.secure_channel(self.target, credentials, options)
        else:
            self._channel = grpc.insecure_channel(self.target, options)
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    @property
    def where(self) -> str:
        return self.target

    def close(self) -> None:
        self._channel.close()

    def _model_spec(self, spec, signature: str | None = None) -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version
        if signature:
            spec.signature_name = signature

    def _call(self, method, request):
        """One RPC with a deadline, retried with backoff on UNAVAILABLE."""
        def attempt():
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as error:
                raise _error(error.code(), f"{self.model_name} at {self.target}",
                             error.details()) from None

        return with_retries(attempt, self.retries, self.backoff)

    def _predict_batch(self, examples: list[bytes], signature: str,
                       output_filter: Sequence[str]) -> dict[str, np.ndarray]:
        """One Predict request: {output name: (len(examples), ...) array}."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature)
        request.inputs[EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto(examples, tf.string))
        request.output_filter.extend(output_filter)
        response = self._call(self._predictions.Predict, request)
        return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}

    def classify(self, examples: Sequence[bytes], signature: str):
        """Classify API: a ClassificationResult with one Classifications per example."""
        from tensorflow_serving.apis import classification_pb2

        request = examples_request(classification_pb2.ClassificationRequest, self.model_name,
                                   signature, examples)
        self._model_spec(request.model_spec, signature)
        return self._call(self._predictions.Classify, request).result

    def regress(self, examples: Sequence[bytes], signature: str) -> np.ndarray:
        """Regress API: one value per example."""
        from tensorflow_serving.apis import regression_pb2

        request = examples_request(regression_pb2.RegressionRequest, self.model_name,
                                   signature, examples)
        self._model_spec(request.model_spec, signature)
        result = self._call(self._predictions.Regress, request).result
        return np.array([r.value for r in result.regressions], dtype=np.float32)

    def metadata(self) -> dict:
        """signature name -> SignatureDef proto, from GetModelMetadata."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec)
        response = self._call(self._predictions.GetModelMetadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return dict(signatures.signature_def)

    def status(self) -> list[tuple[int, str]]:
        """(version, state) of each version the server knows of this model."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec)
        response = self._call(self._models.GetModelStatus, request)
        states = get_model_status_pb2.ModelVersionStatus.State
        return [(s.version, states.Name(s.state)) for s in response.model_version_status]

# HTTP status -> the gRPC code it stands for (the first in serving.rest.HTTP_STATUS's order).
_HTTP_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
               403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
               409: grpc.StatusCode.ALREADY_EXISTS, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
               500: grpc.StatusCode.INTERNAL, 501: grpc.StatusCode.UNIMPLEMENTED,
               503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}


def _feature_json(feature) -> list:
    """A tf.Example feature's values as JSON: strings ({"b64": ...} unless UTF-8), ints, floats."""
    kind = feature.WhichOneof("kind")
    values = list(getattr(feature, kind).value) if kind else []
    if kind != "bytes_list":
        return values
    out = []
    for value in values:
        try:
            out.append(value.decode())
        except UnicodeDecodeError:
            out.append({"b64": base64.b64encode(value).decode()})
    return out


def example_json(serialized: bytes) -> dict:
    """A serialized tf.Example as TF Serving's REST classify/regress example object
    ({feature name: [values]}; features without values left out)."""
    import tensorflow as tf

    features = tf.train.Example.FromString(serialized).features.feature
    return {name: _feature_json(f) for name, f in features.items() if f.WhichOneof("kind")}


def _from_json(values: list, dtype) -> np.ndarray:
    """JSON output values as an array of the signature's numpy dtype (bytes for strings)."""
    if dtype == object:
        def as_bytes(v):
            if isinstance(v, list):
                return [as_bytes(x) for x in v]
            return base64.b64decode(v["b64"]) if isinstance(v, dict) else v.encode()
        return np.array(as_bytes(values), dtype=object)
    return np.array(values, dtype=dtype)


@dataclasses.dataclass
class RestClient(_Calls):
    """The same calls as ServingClient, over TF Serving's REST API (port 8501).

    Attributes:
      url: base URL of the REST endpoint, e.g. http://localhost:8501.
      model_name, version, timeout, retries, backoff, batch_size: as ServingClient's.
    """

    url: str
    model_name: str
    version: int | None = None
    timeout: float = 5.0
    retries: int = 3
    backoff: float = 0.1
    batch_size: int = 256

    def __post_init__(self):
        self._signatures: dict | None = None     # metadata(), read once for output dtypes

    @property
    def where(self) -> str:
        return self.url

    def close(self) -> None:
        """Nothing to close: every request has its own connection."""

    def _path(self, suffix: str = "") -> str:
        path = f"{self.url.rstrip('/')}/v1/models/{urllib.parse.quote(self.model_name, safe='')}"
        if self.version is not None:
            path += f"/versions/{self.version}"
        return path + suffix

    def _attempt(self, url: str, body: dict | None):
        """One HTTP request: the answer's JSON, or a ServingError with the gRPC code its
        HTTP status stands for (no connection: UNAVAILABLE; no answer in time: DEADLINE)."""
        where = f"{self.model_name} at {self.url}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                details = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                details = f"HTTP {error.code}: {text[:200]}"
            raise _error(_HTTP_CODES.get(error.code, grpc.StatusCode.UNKNOWN), where,
                         details) from None
        except (TimeoutError, socket.timeout):
            raise _error(grpc.StatusCode.DEADLINE_EXCEEDED, where,
                         f"no answer within {self.timeout:g} s") from None
        except (urllib.error.URLError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            code = grpc.StatusCode.DEADLINE_EXCEEDED if isinstance(reason, TimeoutError) \
                else grpc.StatusCode.UNAVAILABLE
            raise _error(code, where, str(reason)) from None

    def _call(self, suffix: str, body: dict | None = None):
        """One REST call with a timeout per attempt, retried with backoff on UNAVAILABLE."""
        return with_retries(lambda: self._attempt(self._path(suffix), body), self.retries,
                            self.backoff)

    def _output_dtypes(self, signature: str) -> dict:
        """output name -> numpy dtype (object for strings) of a signature, from metadata()."""
        import tensorflow as tf

        if self._signatures is None:
            self._signatures = self.metadata()
        if signature not in self._signatures:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"{self.model_name} at {self.url}: no signature {signature!r}")
        outputs = self._signatures[signature].outputs
        return {name: object if info.dtype == tf.string.as_datatype_enum
                else tf.as_dtype(info.dtype).as_numpy_dtype for name, info in outputs.items()}

    def _predict_batch(self, examples: list[bytes], signature: str,
                       output_filter: Sequence[str]) -> dict[str, np.ndarray]:
        """One :predict request, row format, each example as {"b64": ...}."""
        instances = [{"b64": base64.b64encode(e).decode()} for e in examples]
        rows = self._call(":predict", {"signature_name": signature,
                                       "instances": instances})["predictions"]
        dtypes = self._output_dtypes(signature)
        if len(dtypes) == 1:
            columns = {next(iter(dtypes)): rows}
        else:
            columns = {name: [row[name] for row in rows] for name in dtypes}
        wanted = list(output_filter) or list(columns)
        return {name: _from_json(columns[name], dtypes[name]) for name in wanted}

    def _examples_call(self, verb: str, examples: Sequence[bytes], signature: str) -> list:
        body = {"signature_name": signature, "examples": [example_json(e) for e in examples]}
        return self._call(verb, body)["result"]

    def classify(self, examples: Sequence[bytes], signature: str):
        """Classify API: a ClassificationResult with one Classifications per example."""
        from tensorflow_serving.apis import classification_pb2

        result = classification_pb2.ClassificationResult()
        for row in self._examples_call(":classify", examples, signature):
            classes = result.classifications.add()
            for label, score in row:
                classes.classes.add(label=label, score=score)
        return result

    def regress(self, examples: Sequence[bytes], signature: str) -> np.ndarray:
        """Regress API: one value per example."""
        return np.array(self._examples_call(":regress", examples, signature), dtype=np.float32)

    def metadata(self) -> dict:
        """signature name -> SignatureDef proto, from the metadata endpoint."""
        from google.protobuf import json_format
        from tensorflow.core.protobuf import meta_graph_pb2

        answer = self._call("/metadata")["metadata"]["signature_def"]["signature_def"]
        return {name: json_format.ParseDict(definition, meta_graph_pb2.SignatureDef())
                for name, definition in answer.items()}

    def status(self) -> list[tuple[int, str]]:
        """(version, state) of each version the server knows of this model."""
        answer = self._call("")
        return [(int(s["version"]), s["state"]) for s in answer["model_version_status"]]


def examples_from_csv(path: str, feature_types: dict[str, str]) -> list[bytes]:
    """Serialized tf.Examples from a CSV of raw feature columns (other columns are ignored).

    Raises ValueError naming the file, line and column of a missing column or a
    value that is not a number where the model needs one.
    """
    import tensorflow as tf

    from transform.ingest import read_text_table

    table = read_text_table(path)
    missing = [name for name in feature_types if name not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the model needs "
                         f"{sorted(feature_types)}")
    columns = {name: table[name].tolist() for name in feature_types}
    examples = []
    for row_index in range(len(table)):
        example = tf.train.Example()
        for name, kind in feature_types.items():
            text = columns[name][row_index]
            feature = example.features.feature[name]
            try:
                if kind == "string":
                    feature.bytes_list.value.append(str(text).encode())
                elif kind == "int64":
                    feature.int64_list.value.append(int(text))
                else:
                    feature.float_list.value.append(float(text))
            except (TypeError, ValueError):
                raise ValueError(f"{path} line {row_index + 2}, column '{name}': {text!r} is not "
                                 f"{'an integer' if kind == 'int64' else 'a number'}") from None
        examples.append(example.SerializeToString())
    return examples


def main(argv=None, prog: str = "python -m serving.client") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Call a model served over TF Serving's gRPC or REST API.")
    parser.add_argument("--target", default="localhost:8500", help="host:port (gRPC)")
    parser.add_argument("--rest", metavar="URL",
                        help="use the REST API at URL (e.g. http://localhost:8501) instead of gRPC")
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--version", type=int, help="pin a model version (default: newest)")
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline per attempt, seconds")
    parser.add_argument("--retries", type=int, default=3, help="retries on UNAVAILABLE")
    parser.add_argument("--tls-ca", help="CA certificate (PEM) for a TLS channel")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="predict for the rows of a CSV file")
    predict.add_argument("--csv", required=True, help="raw feature columns, one row per example")
    predict.add_argument("--batch-size", type=int, default=256, help="rows per request")
    predict.add_argument("--signature", default=SERVING_SIGNATURE)
    commands.add_parser("status", help="versions and their states (ModelService)")
    commands.add_parser("metadata", help="signatures with their inputs and outputs")
    args = parser.parse_args(argv)
    if args.rest and args.tls_ca:
        parser.error("--tls-ca is for gRPC only")
    batch_size = getattr(args, "batch_size", 256)
    if args.rest:
        client = RestClient(args.rest, args.model_name, args.version, args.timeout, args.retries,
                            batch_size=batch_size)
    else:
        client = ServingClient(args.target, args.model_name, args.version, args.timeout,
                               args.retries, batch_size=batch_size, tls_ca=args.tls_ca)
    try:
        if args.command == "status":
            for version, state in client.status():
                print(f"{version}\t{state}")
        elif args.command == "metadata":
            for name, signature in sorted(client.metadata().items()):
                inputs = ", ".join(sorted(signature.inputs))
                outputs = ", ".join(sorted(signature.outputs))
                print(f"{name} [{signature.method_name}]: ({inputs}) -> ({outputs})")
        else:
            outputs = client.predict(examples_from_csv(args.csv, client.raw_feature_types()),
                                     args.signature)
            keys = sorted(outputs)
            print(",".join(["line"] + keys))
            for row in range(len(outputs[keys[0]])):
                print(",".join([str(row + 2)] + [f"{outputs[k][row]:.6g}" for k in keys]))
        return 0
    except (ServingError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
