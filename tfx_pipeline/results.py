"""Reads what the last pipeline run produced from ML Metadata and TFMA output."""

from __future__ import annotations

import dataclasses

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    blessed: bool | None
    evaluation_uri: str | None
    pushed_destination: str | None   # None when nothing was pushed
    failed_thresholds: tuple[str, ...]


def _store(metadata_path: str) -> metadata_store.MetadataStore:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def _latest(store, type_name: str):
    artifacts = store.get_artifacts_by_type(type_name)
    return max(artifacts, key=lambda a: a.id) if artifacts else None


def _int_property(artifact, name: str) -> int | None:
    value = artifact.custom_properties.get(name)
    return value.int_value if value is not None else None


def failed_thresholds(evaluation_uri: str) -> tuple[str, ...]:
    """Readable lines for each threshold the candidate missed."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_validation_result(evaluation_uri)
    lines = []
    for per_slice in result.metric_validations_per_slice:
        where = tfma.slicer.stringify_slice_key(tfma.slicer.deserialize_slice_key(per_slice.slice_key)) \
            if per_slice.HasField("slice_key") else "Overall"
        for failure in per_slice.failures:
            key = failure.metric_key
            bound = failure.metric_threshold.value_threshold
            wanted = []
            if bound.HasField("lower_bound"):
                wanted.append(f">= {bound.lower_bound.value:g}")
            if bound.HasField("upper_bound"):
                wanted.append(f"<= {bound.upper_bound.value:g}")
            lines.append(f"{key.output_name} {key.name} = {failure.metric_value.double_value.value:.4f} "
                         f"on slice {where}, required {' and '.join(wanted) or failure.metric_threshold}")
    return tuple(lines)


def last_run_outcome(metadata_path: str) -> RunOutcome:
    store = _store(metadata_path)
    blessing = _latest(store, "ModelBlessing")
    evaluation = _latest(store, "ModelEvaluation")
    pushed = _latest(store, "PushedModel")
    blessed = bool(_int_property(blessing, "blessed")) if blessing else None
    destination = None
    if pushed is not None and _int_property(pushed, "pushed"):
        destination = pushed.custom_properties["pushed_destination"].string_value
    failures = failed_thresholds(evaluation.uri) if evaluation and blessed is False else ()
    return RunOutcome(blessed, evaluation.uri if evaluation else None, destination, failures)


def overall_metrics(evaluation_uri: str) -> dict[str, dict[str, float]]:
    """output name -> metric name -> value, on the overall slice."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_eval_result(evaluation_uri)
    table: dict[str, dict[str, float]] = {}
    for slice_key, metrics in result.slicing_metrics:
        if slice_key != ():
            continue
        for output_name, by_sub_key in metrics.items():
            for name, value in by_sub_key.get("", {}).items():
                if "doubleValue" in value:
                    table.setdefault(output_name, {})[name] = value["doubleValue"]
    return table
