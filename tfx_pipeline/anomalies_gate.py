"""A component that stops the run when ExampleValidator found anomalies.

ExampleValidator only records anomalies; this gate reads them and fails with a
readable list, so nothing downstream (Transform, Trainer) runs on bad data.
"""


import os

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import ExampleAnomalies


class AnomaliesFound(RuntimeError):
    """The data does not match the schema."""


def describe_anomalies(anomalies_uri: str) -> list:
    """One line per anomaly: split, feature, short and long description."""
    lines = []
    for entry in sorted(tf.io.gfile.listdir(anomalies_uri)):
        split_dir = os.path.join(anomalies_uri, entry.rstrip("/"))
        path = os.path.join(split_dir, "SchemaDiff.pb")
        if not entry.startswith("Split-") or not tf.io.gfile.exists(path):
            continue
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(tf.io.gfile.GFile(path, "rb").read())
        split = entry.rstrip("/")[len("Split-"):]
        for feature, info in sorted(anomalies.anomaly_info.items()):
            lines.append(f"split {split!r}, feature {feature!r}: {info.short_description} "
                         f"({info.description})")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            lines.append(f"split {split!r}: {info.short_description} ({info.description})")
    return lines


@component
def AnomaliesGate(anomalies: InputArtifact[ExampleAnomalies]):  # noqa: N802 (component name)
    problems = describe_anomalies(anomalies.uri)
    if problems:
        raise AnomaliesFound("ExampleValidator found anomalies: " + "; ".join(problems))
