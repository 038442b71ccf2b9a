"""TF Serving warmup requests for an exported model.

TF Serving replays `assets.extra/tf_serving_warmup_requests` (a TFRecord file
of `PredictionLog`s, at most 1000 records) before it marks a new version
AVAILABLE, so the first real requests do not pay for graph initialisation
and memory allocation. The requests here are built from real examples:

  - serving_default at batch size 1 and at each of server-side batching's
    allowed batch sizes (serving/deploy/batching_parameters.txt) the examples
    allow, so every shape the GPU will see is warm;
  - each classify_<step> and regress_<target> signature once, at batch 8.
"""

from __future__ import annotations

import os
from typing import Sequence

import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, input_pb2, predict_pb2,
                                     prediction_log_pb2, regression_pb2)

from serving.export import (CLASSIFY_METHOD, EXAMPLES_INPUT, REGRESS_METHOD, SERVING_SIGNATURE)

WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000              # TF Serving reads no more than this many
PREDICT_BATCH_SIZES = (1, 8, 16, 32, 64, 128, 256)
SIGNATURE_BATCH_SIZE = 8


def _input(examples: Sequence[bytes]) -> input_pb2.Input:
    request_input = input_pb2.Input()
    for record in examples:
        request_input.example_list.examples.add().ParseFromString(record)
    return request_input


def warmup_logs(examples: Sequence[bytes], methods: dict[str, str],
                model_name: str = "") -> list[prediction_log_pb2.PredictionLog]:
    """PredictionLogs for serialized tf.Examples.

    Args:
      examples: serialized raw tf.Examples, at least one.
      methods: signature name -> method name (tensorflow/serving/...) of the
        model's classify and regress signatures; others are ignored.
      model_name: written into each request's model_spec (TF Serving ignores it
        during warmup).
    """
    if not examples:
        raise ValueError("warmup needs at least one example")
    logs = []
    for size in PREDICT_BATCH_SIZES:
        if size > len(examples) and size != PREDICT_BATCH_SIZES[0]:
            break
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = SERVING_SIGNATURE
        request.inputs[EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto(list(examples[:size])))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    batch = examples[:SIGNATURE_BATCH_SIZE]
    for name, method in sorted(methods.items()):
        if method == CLASSIFY_METHOD:
            request = classification_pb2.ClassificationRequest(input=_input(batch))
            request.model_spec.name, request.model_spec.signature_name = model_name, name
            logs.append(prediction_log_pb2.PredictionLog(
                classify_log=prediction_log_pb2.ClassifyLog(request=request)))
        elif method == REGRESS_METHOD:
            request = regression_pb2.RegressionRequest(input=_input(batch))
            request.model_spec.name, request.model_spec.signature_name = model_name, name
            logs.append(prediction_log_pb2.PredictionLog(
                regress_log=prediction_log_pb2.RegressLog(request=request)))
    return logs[:MAX_RECORDS]


def signature_methods(export_dir: str) -> dict[str, str]:
    """signature name -> method name, read from saved_model.pb."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(export_dir, "saved_model.pb"), "rb") as handle:
        saved_model.ParseFromString(handle.read())
    return {name: signature.method_name
            for name, signature in saved_model.meta_graphs[0].signature_def.items()
            if not name.startswith("__")}


def write_warmup(export_dir: str, examples: Sequence[bytes]) -> str:
    """Writes the warmup file into `export_dir`/assets.extra; returns its path."""
    extra = os.path.join(export_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    path = os.path.join(extra, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for log in warmup_logs(examples, signature_methods(export_dir)):
            writer.write(log.SerializeToString())
    return path


def read_warmup(export_dir: str) -> list[prediction_log_pb2.PredictionLog]:
    path = os.path.join(export_dir, "assets.extra", WARMUP_FILE)
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(path)]
