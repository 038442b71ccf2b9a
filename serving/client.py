"""A gRPC client for models served by TF Serving (or serving.local_server).

    client = ServingClient("localhost:8500", "shared_bottom", timeout=2.0)
    outputs = client.predict(serialized_examples)      # {output name: (rows,) array}
    client.status()                                      # [(version, "AVAILABLE"), ...]

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
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from typing import Sequence

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


@dataclasses.dataclass
class ServingClient:
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

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def _model_spec(self, spec, signature: str | None = None) -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version
        if signature:
            spec.signature_name = signature

    def _call(self, method, request):
        """One RPC with a deadline, retried with backoff on UNAVAILABLE."""
        wait = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as error:
                code = error.code()
                if code in RETRYABLE and attempt < self.retries:
                    time.sleep(wait * (0.5 + random.random()))
                    wait *= 2
                    continue
                hint = _HINTS.get(code, "")
                raise ServingError(code, f"{self.model_name} at {self.target}: {code.name}: "
                                         f"{error.details()}" + (f" ({hint})" if hint else "")) \
                    from None
        raise AssertionError("unreachable")

    def predict(self, examples: Sequence[bytes], signature: str = SERVING_SIGNATURE,
                output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Serialized tf.Examples in; {output name: array with one row per example} out."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        if len(examples) == 0:
            raise ValueError("predict() needs at least one example")
        parts: dict[str, list] = {}
        for start in range(0, len(examples), self.batch_size):
            request = predict_pb2.PredictRequest()
            self._model_spec(request.model_spec, signature)
            request.inputs[EXAMPLES_INPUT].CopyFrom(
                tf.make_tensor_proto(list(examples[start:start + self.batch_size]), tf.string))
            request.output_filter.extend(output_filter)
            response = self._call(self._predictions.Predict, request)
            for key, proto in response.outputs.items():
                parts.setdefault(key, []).append(tf.make_ndarray(proto))
        return {key: np.concatenate(chunks) for key, chunks in parts.items()}

    def classify(self, examples: Sequence[bytes], signature: str):
        """Classify API: a ClassificationResult with one Classifications per example."""
        from tensorflow_serving.apis import classification_pb2

        request = classification_pb2.ClassificationRequest()
        self._model_spec(request.model_spec, signature)
        for record in examples:
            request.input.example_list.examples.add().ParseFromString(record)
        return self._call(self._predictions.Classify, request).result

    def regress(self, examples: Sequence[bytes], signature: str) -> np.ndarray:
        """Regress API: one value per example."""
        from tensorflow_serving.apis import regression_pb2

        request = regression_pb2.RegressionRequest()
        self._model_spec(request.model_spec, signature)
        for record in examples:
            request.input.example_list.examples.add().ParseFromString(record)
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
                                   f"{self.model_name} at {self.target}: no version AVAILABLE "
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.client",
                                     description="Call a model served over TF Serving's gRPC API.")
    parser.add_argument("--target", default="localhost:8500", help="host:port")
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
    client = ServingClient(args.target, args.model_name, args.version, args.timeout, args.retries,
                           batch_size=getattr(args, "batch_size", 256), tls_ca=args.tls_ca)
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
