"""A local stand-in for TF Serving's gRPC API, for development and tests.

    python -m serving.local_server --model-name shared_bottom \\
        --model-base-path serving_models/shared_bottom --port 8500 --rest-port 8501
    python -m serving.local_server --model-config-file serving/deploy/models.config --port 8500

It serves the same SavedModels as `tensorflow_model_server`, through the same
protos and services (tensorflow_serving.apis):

  PredictionService  Predict, Classify, Regress, GetModelMetadata
  ModelService       GetModelStatus

and, on --rest-port (8501 by default), TF Serving's REST API answered by the
same handlers (serving/rest.py).

It watches each base path and loads new versions without a restart, replays
their warmup requests first, keeps the last good version serving when a new
one fails to load (GetModelStatus reports the failure), and reports errors
with TF Serving's status codes: NOT_FOUND for an unknown model or version,
INVALID_ARGUMENT for a request that does not fit the signature (checked
before the model runs, serving/validation.py), FAILED_PRECONDITION for an
unknown Predict signature, and INTERNAL, with the traceback in the server's
log only, for anything that fails inside the server or the model. It is not a
performance stand-in: there is no server-side batching and no GPU. SIGINT or
SIGTERM stops it after in-flight calls finish.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import message, text_format
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)
from tensorflow_serving.config import model_server_config_pb2

from serving import warmup as warmup_requests
from serving.export import CLASSIFY_METHOD, REGRESS_METHOD, SERVING_SIGNATURE
from serving.servables import LoadedVersion, ModelVersions, ServableNotFound, Watcher
from serving.validation import (DEFAULT_MAX_BATCH_SIZE, RequestError, check_input_names,
                                decode_input, serialized_examples)

log = logging.getLogger("serving.local_server")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
DEFAULT_REST_PORT = 8501   # TF Serving's images run --rest_api_port=8501


def _resolve(watcher: Watcher, model_spec) -> LoadedVersion:
    try:
        model = watcher.model(model_spec.name)
        version = model_spec.version.value if model_spec.HasField("version") else None
        return model.get(version, model_spec.version_label or None)
    except ServableNotFound as error:
        raise RequestError(grpc.StatusCode.NOT_FOUND, str(error)) from None


_METHOD_KINDS = {CLASSIFY_METHOD: "classification", REGRESS_METHOD: "regression"}


def _signature(loaded: LoadedVersion, name: str, method: str | None = None):
    """(name, SignatureDef, function) of a signature, refused as TF Serving refuses it.

    An unknown name is FAILED_PRECONDITION for Predict (no `method`) and
    INVALID_ARGUMENT for Classify and Regress, as TF Serving answers them.
    """
    name = name or SERVING_SIGNATURE
    if name not in loaded.signature_defs:
        if method:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"No signature was found with the name: {name}")
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                           f'Serving signature key "{name}" not found.')
    actual = loaded.signature_defs[name].method_name
    if method and actual != method:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Expected {_METHOD_KINDS[method]} signature method_name to be "
                           f"{method}. Was: {actual}")
    return name, loaded.signature_defs[name], loaded.functions[name]


_TF_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[")


def _tf_message(error: Exception) -> str:
    """TF's error text without the eager runtime's stack-trace scaffolding."""
    text = getattr(error, "message", None) or str(error)
    lines = [l.strip() for l in text.splitlines()]
    return " ".join(l for l in lines if l and not l.startswith(_TF_NOISE)) or text.strip()


def _call(function, inputs: dict):
    """Runs a signature on checked inputs.

    TensorFlow's InvalidArgumentError (the graph refusing the data, e.g. bytes that
    do not parse as tf.Examples) comes back as INVALID_ARGUMENT with TF's message, as
    TF Serving passes it on; any other error is the server's (INTERNAL, in _answer).
    """
    try:
        return {k: v.numpy() for k, v in function(**inputs).items()}
    except tf.errors.InvalidArgumentError as error:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, _tf_message(error)) from None


def _fill_model_spec(spec, request, loaded: LoadedVersion, signature: str | None = None) -> None:
    """A response's model_spec: the requested name, the version that answered."""
    spec.name = request.model_spec.name
    spec.version.value = loaded.version
    if signature:
        spec.signature_name = signature


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, watcher: Watcher, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE):
        self.watcher = watcher
        self.max_batch_size = max_batch_size

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        loaded = _resolve(self.watcher, request.model_spec)
        name, definition, function = _signature(loaded, request.model_spec.signature_name)
        check_input_names(definition.inputs, request.inputs)
        inputs = {key: decode_input(key, proto, definition.inputs[key], self.max_batch_size)
                  for key, proto in request.inputs.items()}
        outputs = _call(function, inputs)
        wanted = list(request.output_filter) or list(outputs)
        missing = [k for k in wanted if k not in outputs]
        if missing:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output tensor alias not found in signature: {', '.join(missing)}")
        response = predict_pb2.PredictResponse()
        _fill_model_spec(response.model_spec, request, loaded, name)
        for key in wanted:
            response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
        return response

    def signature_inputs(self, request: predict_pb2.PredictRequest) -> dict:
        """input name -> TensorInfo of the signature `request` would run, before its inputs
        are filled (the REST API types JSON by it); refused as predict() refuses it."""
        loaded = _resolve(self.watcher, request.model_spec)
        return dict(_signature(loaded, request.model_spec.signature_name)[1].inputs)

    def _run_on_examples(self, request, method: str, response) -> dict:
        """Classify/Regress: runs the signature on the request's tf.Examples."""
        loaded = _resolve(self.watcher, request.model_spec)
        name, _, function = _signature(loaded, request.model_spec.signature_name, method)
        examples = serialized_examples(request.input, self.max_batch_size)
        outputs = _call(function, {"inputs": tf.constant(examples, tf.string)})
        _fill_model_spec(response.model_spec, request, loaded, name)
        return outputs

    def classify(self, request) -> classification_pb2.ClassificationResponse:
        response = classification_pb2.ClassificationResponse()
        outputs = self._run_on_examples(request, CLASSIFY_METHOD, response)
        for classes, scores in zip(outputs["classes"], outputs["scores"]):
            row = response.result.classifications.add()
            for label, score in zip(classes, scores):
                row.classes.add(label=label.decode(), score=float(score))
        return response

    def regress(self, request) -> regression_pb2.RegressionResponse:
        response = regression_pb2.RegressionResponse()
        outputs = self._run_on_examples(request, REGRESS_METHOD, response)
        for value in np.asarray(outputs["outputs"]).reshape(-1):
            response.result.regressions.add(value=float(value))
        return response

    def metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        loaded = _resolve(self.watcher, request.model_spec)
        unsupported = [f for f in request.metadata_field if f != "signature_def"]
        if unsupported or not request.metadata_field:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Metadata field {', '.join(unsupported) or '(none)'} is not "
                               "supported; ask for signature_def")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, definition in loaded.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(definition)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_model_spec(response.model_spec, request, loaded)
        response.metadata["signature_def"].Pack(signature_map)
        return response

    # The gRPC method names, each answering errors with their status code.
    def Predict(self, request, context):
        return _answer(context, self.predict, request)

    def Classify(self, request, context):
        return _answer(context, self.classify, request)

    def Regress(self, request, context):
        return _answer(context, self.regress, request)

    def GetModelMetadata(self, request, context):
        return _answer(context, self.metadata, request)


def _labelled(model: ModelVersions, model_spec) -> int:
    """The version a label names in the model's config; NOT_FOUND for an unknown label."""
    if model_spec.version_label not in model.labels:
        raise RequestError(grpc.StatusCode.NOT_FOUND,
                           f"Unrecognized servable version label: {model_spec.version_label}")
    return model.labels[model_spec.version_label]


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, watcher: Watcher):
        self.watcher = watcher

    def status(self, request) -> get_model_status_pb2.GetModelStatusResponse:
        try:
            model = self.watcher.model(request.model_spec.name)
        except ServableNotFound as error:
            raise RequestError(grpc.StatusCode.NOT_FOUND, str(error)) from None
        states = model.states()
        spec = request.model_spec
        if spec.HasField("version") or spec.version_label:
            version = spec.version.value if spec.HasField("version") else _labelled(model, spec)
            states = [s for s in states if s[0] == version]
            if not states:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {version} of model "
                                   f"{request.model_spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state, code, error in states:
            entry = response.model_version_status.add(
                version=version, state=get_model_status_pb2.ModelVersionStatus.State.Value(state))
            entry.status.error_code = code        # the load's own error code, as TF Serving's
            entry.status.error_message = error
        return response

    def GetModelStatus(self, request, context):
        return _answer(context, self.status, request)


def run_handler(handler, request):
    """The handler's response, or a RequestError: the handler's own, or INTERNAL for anything
    else (its traceback logged here, the caller told only that the server failed). The gRPC
    services and the REST API (serving/rest.py) answer through this, so both give the same
    code and message for the same request."""
    try:
        return handler(request)
    except RequestError:
        raise
    except Exception:   # a fault in the server or the model, never the caller's
        log.exception("internal error answering %s for model %r", handler.__name__,
                      request.model_spec.name)
        raise RequestError(grpc.StatusCode.INTERNAL, (
            f"Internal error in the server while answering {handler.__name__} for model "
            f"'{request.model_spec.name}'; the server's log has the details.")) from None


def _answer(context, handler, request):
    """The handler's response; a RequestError aborts the call with its status code."""
    try:
        return run_handler(handler, request)
    except RequestError as error:
        context.abort(error.code, str(error))


class _Unparseable:
    """A request whose bytes did not parse as its proto."""

    def __init__(self, error: Exception):
        self.error = error


class RefuseUnparseableRequests(grpc.ServerInterceptor):
    """Answers a request that does not parse as its proto with INVALID_ARGUMENT.

    Without this, gRPC answers INTERNAL ("Exception deserializing request!") before
    any servicer sees the request, and a caller's malformed bytes look like a
    server fault. Applies to unary-unary methods, which are all this server has.
    """

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        parse, run, method = (handler.request_deserializer, handler.unary_unary,
                              handler_call_details.method)

        def tolerant_parse(data: bytes):
            try:
                return parse(data)
            except message.DecodeError as error:
                return _Unparseable(error)

        def guarded_run(request, context):
            if isinstance(request, _Unparseable):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"Could not parse the {method} request: {request.error}")
            return run(request, context)

        return grpc.unary_unary_rpc_method_handler(guarded_run, tolerant_parse,
                                                   handler.response_serializer)


def replay_warmup(loaded: LoadedVersion) -> None:
    """Runs a version's warmup requests on it before it serves (a ModelVersions warmup)."""
    try:
        logs = warmup_requests.read_warmup(loaded.path)
    except (tf.errors.NotFoundError, FileNotFoundError):
        return
    for entry in logs:
        kind = entry.WhichOneof("log_type")
        request = getattr(entry, kind).request
        if kind == "predict_log":
            _, _, function = _signature(loaded, request.model_spec.signature_name)
            _call(function, {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
        else:
            method = CLASSIFY_METHOD if kind == "classify_log" else REGRESS_METHOD
            _, _, function = _signature(loaded, request.model_spec.signature_name, method)
            examples = serialized_examples(request.input, max_batch_size=sys.maxsize)
            _call(function, {"inputs": tf.constant(examples, tf.string)})
    log.info("replayed %d warmup requests for version %d", len(logs), loaded.version)


def prepare_version(loaded: LoadedVersion) -> None:
    """Refuses a version without the default signature, then replays its warmup requests
    (a ModelVersions warmup: what it raises makes the load fail)."""
    _signature(loaded, SERVING_SIGNATURE)
    replay_warmup(loaded)


def model_configs(args) -> list[model_server_config_pb2.ModelConfig]:
    if args.model_config_file:
        with open(args.model_config_file, encoding="utf-8") as handle:
            config = text_format.Parse(handle.read(), model_server_config_pb2.ModelServerConfig())
        return list(config.model_config_list.config)
    if not (args.model_name and args.model_base_path):
        raise SystemExit("error: give --model-name and --model-base-path, or --model-config-file")
    return [model_server_config_pb2.ModelConfig(name=args.model_name,
                                                base_path=args.model_base_path)]


class LocalServer:
    """The gRPC server, its watcher and services, and the REST API if asked; start(), stop()."""

    def __init__(self, configs, port: int = 0, host: str = "127.0.0.1",
                 poll_seconds: float = 1.0, workers: int = 8, tls: tuple[bytes, bytes] | None = None,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, rest_port: int | None = None):
        """`tls`: (PEM private key, PEM certificate chain) to serve over TLS; None for plain text.
        `max_batch_size`: the most rows a request may have (more is INVALID_ARGUMENT).
        `rest_port`: serve TF Serving's REST API there too (0: any free port; None: no REST);
        `self.rest_port` is the port bound (None without REST)."""
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
            interceptors=[RefuseUnparseableRequests()])
        self.watcher = Watcher([ModelVersions(c, prepare_version) for c in configs], poll_seconds)
        predictions, models = PredictionService(self.watcher, max_batch_size), \
            ModelService(self.watcher)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(predictions,
                                                                            self.server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(models, self.server)
        self.rest = None
        if rest_port is not None:   # bound before the gRPC port: if taken, nothing is bound
            from serving.rest import RestServer   # (rest.py imports this module)

            self.rest = RestServer(predictions, models, rest_port, host)
        self.rest_port = self.rest.port if self.rest else None
        if tls:
            credentials = grpc.ssl_server_credentials([tls])
            self.port = self.server.add_secure_port(f"{host}:{port}", credentials)
        else:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        self.address = f"{host}:{self.port}"

    def start(self) -> "LocalServer":
        self.watcher.start()
        self.server.start()
        if self.rest:
            self.rest.start()
        return self

    def stop(self, grace: float = 5.0) -> None:
        stopping = self.server.stop(grace)
        if self.rest:
            self.rest.stop(grace)
        stopping.wait()
        self.watcher.stop()


def build_parser(prog: str = "python -m serving.local_server") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog,
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-name")
    parser.add_argument("--model-base-path", help="directory of numeric version directories")
    parser.add_argument("--model-config-file", help="a TF Serving models.config (text proto)")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (0: any free port)")
    parser.add_argument("--rest-port", type=int, default=None,
                        help=f"REST API port (0: any free port; default {DEFAULT_REST_PORT}, "
                             "left off with a warning when that port is taken)")
    parser.add_argument("--no-rest", action="store_true", help="serve gRPC only")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--file-system-poll-wait-seconds", type=float, default=1.0)
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                        help="the most rows a request may have; more is INVALID_ARGUMENT "
                             "(default %(default)s)")
    parser.add_argument("--ssl-key-file", help="PEM private key: serve over TLS")
    parser.add_argument("--ssl-cert-file", help="PEM certificate chain for --ssl-key-file")
    return parser


def start_server(args, tls) -> LocalServer:
    """The started server for the command line's options. An explicit --rest-port that cannot
    be bound is an error (as TF Serving's); the default one, when taken, leaves REST off."""
    def start(rest_port):
        return LocalServer(model_configs(args), args.port, args.host,
                           args.file_system_poll_wait_seconds, tls=tls,
                           max_batch_size=args.max_batch_size, rest_port=rest_port).start()

    if args.no_rest:
        return start(None)
    if args.rest_port is not None:
        try:
            return start(args.rest_port)
        except OSError as error:
            raise SystemExit(f"error: REST port {args.rest_port}: "
                             f"{error.strerror or error}") from None
    try:
        return start(DEFAULT_REST_PORT)
    except OSError as error:
        log.warning("REST API off: port %d: %s (give --rest-port 0 for any free port)",
                    DEFAULT_REST_PORT, error.strerror or error)
        return start(None)


def main(argv=None, prog: str = "python -m serving.local_server") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tls = None
    if args.ssl_key_file or args.ssl_cert_file:
        if not (args.ssl_key_file and args.ssl_cert_file):
            raise SystemExit("error: TLS needs both --ssl-key-file and --ssl-cert-file")
        with open(args.ssl_key_file, "rb") as key, open(args.ssl_cert_file, "rb") as cert:
            tls = (key.read(), cert.read())
    server = start_server(args, tls)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):   # before the lines that say it serves
        signal.signal(signum, lambda *_: stopped.set())
    print(f"serving on {server.address}", flush=True)
    if server.rest:
        print(f"REST API on http://{server.rest.address}", flush=True)
    stopped.wait()
    server.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
