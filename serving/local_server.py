"""A local stand-in for TF Serving's gRPC API, for development and tests.

    python -m serving.local_server --model-name shared_bottom \\
        --model-base-path serving_models/shared_bottom --port 8500
    python -m serving.local_server --model-config-file serving/deploy/models.config --port 8500

It serves the same SavedModels as `tensorflow_model_server`, through the same
protos and services (tensorflow_serving.apis):

  PredictionService  Predict, Classify, Regress, GetModelMetadata
  ModelService       GetModelStatus

It watches each base path and loads new versions without a restart, replays
their warmup requests first, and reports errors with TF Serving's status
codes (NOT_FOUND for an unknown model or version, INVALID_ARGUMENT for bad
inputs, FAILED_PRECONDITION for an unknown signature). It is not a
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
from google.protobuf import text_format
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)
from tensorflow_serving.config import model_server_config_pb2

from serving import warmup as warmup_requests
from serving.export import CLASSIFY_METHOD, REGRESS_METHOD, SERVING_SIGNATURE
from serving.servables import LoadedVersion, ModelVersions, ServableNotFound, Watcher

log = logging.getLogger("serving.local_server")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class RequestError(Exception):
    """An error to return with a gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def _resolve(watcher: Watcher, model_spec) -> LoadedVersion:
    try:
        model = watcher.model(model_spec.name)
        version = model_spec.version.value if model_spec.HasField("version") else None
        return model.get(version, model_spec.version_label or None)
    except ServableNotFound as error:
        raise RequestError(grpc.StatusCode.NOT_FOUND, str(error)) from None


def _signature(loaded: LoadedVersion, name: str, method: str | None = None):
    name = name or SERVING_SIGNATURE
    if name not in loaded.signature_defs:
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                           f'Serving signature key "{name}" not found.')
    actual = loaded.signature_defs[name].method_name
    if method and actual != method:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Expected {method} signature method_name. Was: {actual}")
    return name, loaded.signature_defs[name], loaded.functions[name]


_TF_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "[[")


def _tf_message(error: Exception) -> str:
    """TF's error text without the eager runtime's stack-trace scaffolding."""
    text = getattr(error, "message", None) or str(error)
    lines = [l.strip() for l in text.splitlines()]
    return " ".join(l for l in lines if l and not l.startswith(_TF_NOISE)) or text.strip()


def _call(function, inputs: dict):
    """Runs a signature; TF's own errors come back as INVALID_ARGUMENT with TF's message."""
    try:
        return {k: v.numpy() for k, v in function(**inputs).items()}
    except (tf.errors.InvalidArgumentError, TypeError, ValueError) as error:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, _tf_message(error)) from None


def _serialized_examples(request_input) -> list[bytes]:
    """tf.Examples of a Classify/Regress `Input`; a context is merged into every example."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in request_input.example_list.examples]
    if kind == "example_list_with_context":
        merged = []
        for example in request_input.example_list_with_context.examples:
            combined = tf.train.Example()
            combined.CopyFrom(request_input.example_list_with_context.context)
            combined.MergeFrom(example)
            merged.append(combined.SerializeToString())
        return merged
    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")


def _fill_model_spec(spec, request, loaded: LoadedVersion, signature: str | None = None) -> None:
    """A response's model_spec: the requested name, the version that answered."""
    spec.name = request.model_spec.name
    spec.version.value = loaded.version
    if signature:
        spec.signature_name = signature


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, watcher: Watcher):
        self.watcher = watcher

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        loaded = _resolve(self.watcher, request.model_spec)
        name, definition, function = _signature(loaded, request.model_spec.signature_name)
        expected = set(definition.inputs)
        if set(request.inputs) != expected:
            unknown = sorted(set(request.inputs) - expected)
            detail = (f"input tensor alias not found in signature: {', '.join(unknown)}."
                      if unknown else
                      f"input size does not match signature: {len(request.inputs)}!="
                      f"{len(expected)}.")
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{detail} Inputs expected to be in the set "
                               f"{{{','.join(sorted(expected))}}}.")
        inputs = {}
        for key, proto in request.inputs.items():
            try:
                inputs[key] = tf.constant(tf.make_ndarray(proto))
            except Exception as error:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input '{key}' is not a valid TensorProto: {error}") from None
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

    def _run_on_examples(self, request, method: str, response) -> dict:
        """Classify/Regress: runs the signature on the request's tf.Examples."""
        loaded = _resolve(self.watcher, request.model_spec)
        name, _, function = _signature(loaded, request.model_spec.signature_name, method)
        outputs = _call(function, {"inputs": tf.constant(_serialized_examples(request.input))})
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


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, watcher: Watcher):
        self.watcher = watcher

    def status(self, request) -> get_model_status_pb2.GetModelStatusResponse:
        try:
            model = self.watcher.model(request.model_spec.name)
        except ServableNotFound as error:
            raise RequestError(grpc.StatusCode.NOT_FOUND, str(error)) from None
        states = model.states()
        if request.model_spec.HasField("version"):
            version = request.model_spec.version.value
            states = [s for s in states if s[0] == version]
            if not states:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {version} of model "
                                   f"{request.model_spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state, error in states:
            entry = response.model_version_status.add(
                version=version, state=get_model_status_pb2.ModelVersionStatus.State.Value(state))
            if error:
                entry.status.error_code = 3   # INVALID_ARGUMENT, as TF Serving reports load errors
                entry.status.error_message = error
        return response

    def GetModelStatus(self, request, context):
        return _answer(context, self.status, request)


def _answer(context, handler, request):
    try:
        return handler(request)
    except RequestError as error:
        context.abort(error.code, str(error))


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
            _call(function, {"inputs": tf.constant(_serialized_examples(request.input))})
    log.info("replayed %d warmup requests for version %d", len(logs), loaded.version)


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
    """The gRPC server, its watcher and services; start(), then stop()."""

    def __init__(self, configs, port: int = 0, host: str = "127.0.0.1",
                 poll_seconds: float = 1.0, workers: int = 8, tls: tuple[bytes, bytes] | None = None):
        """`tls`: (PEM private key, PEM certificate chain) to serve over TLS; None for plain text."""
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self.watcher = Watcher([ModelVersions(c, replay_warmup) for c in configs], poll_seconds)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.watcher), self.server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.watcher),
                                                                  self.server)
        if tls:
            credentials = grpc.ssl_server_credentials([tls])
            self.port = self.server.add_secure_port(f"{host}:{port}", credentials)
        else:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        self.address = f"{host}:{self.port}"

    def start(self) -> "LocalServer":
        self.watcher.start()
        self.server.start()
        return self

    def stop(self, grace: float = 5.0) -> None:
        self.server.stop(grace).wait()
        self.watcher.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.local_server",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-name")
    parser.add_argument("--model-base-path", help="directory of numeric version directories")
    parser.add_argument("--model-config-file", help="a TF Serving models.config (text proto)")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--file-system-poll-wait-seconds", type=float, default=1.0)
    parser.add_argument("--ssl-key-file", help="PEM private key: serve over TLS")
    parser.add_argument("--ssl-cert-file", help="PEM certificate chain for --ssl-key-file")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tls = None
    if args.ssl_key_file or args.ssl_cert_file:
        if not (args.ssl_key_file and args.ssl_cert_file):
            raise SystemExit("error: TLS needs both --ssl-key-file and --ssl-cert-file")
        with open(args.ssl_key_file, "rb") as key, open(args.ssl_cert_file, "rb") as cert:
            tls = (key.read(), cert.read())
    server = LocalServer(model_configs(args), args.port, args.host,
                         args.file_system_poll_wait_seconds, tls=tls).start()
    print(f"serving on {server.address}", flush=True)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    server.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
