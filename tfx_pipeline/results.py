"""Reads what the last pipeline run produced from ML Metadata and TFMA output."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from tfx_pipeline.push import ALREADY_SERVING_KEY


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    blessed: bool | None
    evaluation_uri: str | None
    pushed_destination: str | None   # None when nothing was pushed
    failed_thresholds: tuple[str, ...]
    already_serving: bool = False    # blessed, identical to the newest version: not copied again


def _store(metadata_path: str) -> metadata_store.MetadataStore:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def _latest(store, type_name: str):
    artifacts = store.get_artifacts_by_type(type_name)
    return max(artifacts, key=lambda a: a.id) if artifacts else None


def imported_examples_uri(metadata_path: str) -> str:
    """The raw Examples the latest run read: the directory its Importer registered
    (the newest output event of an external Examples artifact, so a run that
    reused an older artifact still finds it)."""
    store = _store(metadata_path)
    external = {a.id: a for a in store.get_artifacts_by_type("Examples")
                if _int_property(a, "is_external") == 1}
    events = [event for event in store.get_events_by_artifact_ids(list(external))
              if event.type == metadata_store_pb2.Event.OUTPUT] if external else []
    if not events:
        raise FileNotFoundError(f"no imported Examples recorded in {metadata_path}")
    return external[max(events, key=lambda event: event.execution_id).artifact_id].uri


def imported_split_records(pipeline_root: str, split: str, limit: int | None = None) -> list[bytes]:
    """Serialized raw examples of one split of the latest run under `pipeline_root`
    (the Examples its Importer registered); the first `limit`, or all."""
    from tfx_pipeline.serving_warmup import read_split_records

    metadata_path = os.path.join(pipeline_root, "metadata.sqlite")
    return read_split_records(imported_examples_uri(metadata_path), split, limit)


def _int_property(artifact, name: str) -> int | None:
    value = artifact.custom_properties.get(name)
    return value.int_value if value is not None else None


def describe_failure(failure, where: str) -> str:
    """One readable line for a tfma ValidationFailure."""
    key = failure.metric_key
    value = failure.metric_value.double_value.value
    threshold = failure.metric_threshold
    if value != value:
        return (f"{key.output_name} {key.name} is NaN on slice {where}: the metric is undefined "
                f"there (for example one class only, a constant label, or a prediction that "
                f"is not a number), and an undefined metric never passes a gate")
    if threshold.HasField("change_threshold"):
        allowed = threshold.change_threshold.absolute.value
        return (f"{key.output_name} {key.name} changed by {value:+.4f} against the latest blessed "
                f"model on slice {where}; the gate allows at least {allowed:+g}")
    bound = threshold.value_threshold
    wanted = []
    if bound.HasField("lower_bound"):
        wanted.append(f">= {bound.lower_bound.value:g}")
    if bound.HasField("upper_bound"):
        wanted.append(f"<= {bound.upper_bound.value:g}")
    return (f"{key.output_name} {key.name} = {value:.4f} on slice {where}, "
            f"required {' and '.join(wanted) or threshold}")


def failed_thresholds(evaluation_uri: str) -> tuple[str, ...]:
    """Readable lines for each threshold the candidate missed."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_validation_result(evaluation_uri)
    lines = []
    for per_slice in result.metric_validations_per_slice:
        where = tfma.slicer.stringify_slice_key(tfma.slicer.deserialize_slice_key(per_slice.slice_key)) \
            if per_slice.HasField("slice_key") else "Overall"
        lines += [describe_failure(failure, where) for failure in per_slice.failures]
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
    already = bool(pushed is not None and _int_property(pushed, ALREADY_SERVING_KEY))
    return RunOutcome(blessed, evaluation.uri if evaluation else None, destination, failures,
                      already)


def evaluated_models(metadata_path: str, evaluation_uri: str) -> tuple[str, str | None]:
    """The model URIs the Evaluator read to write `evaluation_uri`: (candidate, baseline or None)."""
    store = _store(metadata_path)
    evaluation = next(a for a in store.get_artifacts_by_type("ModelEvaluation")
                      if a.uri == evaluation_uri)
    producer = next(e.execution_id for e in store.get_events_by_artifact_ids([evaluation.id])
                    if e.type == metadata_store_pb2.Event.OUTPUT)
    inputs: dict[str, list[int]] = {}
    for event in store.get_events_by_execution_ids([producer]):
        if event.type == metadata_store_pb2.Event.INPUT:
            inputs.setdefault(event.path.steps[0].key, []).append(event.artifact_id)

    def uri(key: str) -> str | None:
        ids = inputs.get(key)
        return store.get_artifacts_by_id(ids)[0].uri if ids else None

    return uri("model"), uri("baseline_model")


def _slice_key(per_slice) -> tuple:
    """((column, value), ...) with text values decoded; () for the overall slice."""
    import tensorflow_model_analysis as tfma

    key = tfma.slicer.deserialize_slice_key(per_slice.slice_key)
    return tuple((c, v.decode() if isinstance(v, bytes) else v) for c, v in key)


@dataclasses.dataclass(frozen=True)
class MetricValue:
    """One number of a TFMA evaluation.

    model is "candidate" or "baseline" when a baseline was evaluated, else "".
    is_diff marks candidate - baseline. slice_key is () for the overall slice.
    """

    slice_key: tuple
    model: str
    output: str
    metric: str
    value: float
    is_diff: bool = False
    example_weighted: bool = False

    @property
    def slice_name(self) -> str:
        return " x ".join(f"{column}={value}" for column, value in self.slice_key) or "Overall"


def read_metrics(evaluation_uri: str) -> list[MetricValue]:
    """Every scalar metric TFMA wrote, on every slice, for every model."""
    import tensorflow_model_analysis as tfma

    values = []
    for per_slice in tfma.load_metrics(evaluation_uri):
        slice_key = _slice_key(per_slice)
        for entry in per_slice.metric_keys_and_values:
            if not entry.value.HasField("double_value"):
                continue
            key = entry.key
            values.append(MetricValue(
                slice_key, key.model_name, key.output_name, key.name, entry.value.double_value.value,
                key.is_diff, key.HasField("example_weighted") and key.example_weighted.value))
    return values


CALIBRATION_BAND = (0.9, 1.1)


def calibration_warnings(overall: dict[str, dict[str, float]],
                         band: tuple[float, float] = CALIBRATION_BAND) -> list[str]:
    """One line per output whose calibration (mean prediction / mean label) on the
    overall slice leaves `band`, or is undefined. `overall`: output -> metric -> value."""
    low, high = band
    lines = []
    for output, metrics in sorted(overall.items()):
        value = metrics.get("calibration")
        if value is None:
            continue
        if value != value:
            lines.append(f"{output}: calibration undefined (no positive label)")
        elif not low <= value <= high:
            direction = "over" if value > high else "under"
            error = label_mean_standard_error(metrics)
            noise = (f"; the eval rows' mean label alone has a standard error of {error:.0%}"
                     if error is not None else "")
            lines.append(f"{output}: calibration {value:.3f} outside {low:g}-{high:g} "
                         f"({direction}-predicts by {abs(value - 1):.0%}{noise})")
    return lines


def label_mean_standard_error(metrics: dict[str, float]) -> float | None:
    """Relative standard error of the mean label over the evaluated rows, the part of
    a calibration's spread that no model removes: sd(y) / (mean(y) sqrt(n)), with
    sd(y) = sqrt(mse) / nrmse for the core target and sqrt(p (1 - p)) for a step.
    None when the metrics to compute it are missing or the mean label is 0."""
    count, mean = metrics.get("example_count"), metrics.get("mean_label")
    if not count or not mean or mean != mean:
        return None
    if "mse" in metrics and metrics.get("nrmse"):
        deviation = math.sqrt(metrics["mse"]) / metrics["nrmse"]
    elif 0 < mean < 1 and "auc" in metrics:
        deviation = math.sqrt(mean * (1 - mean))
    else:
        return None
    return deviation / (mean * math.sqrt(count))


def overall_metrics(evaluation_uri: str) -> dict[str, dict[str, float]]:
    """output name -> metric name -> the candidate's value, on the overall slice."""
    table: dict[str, dict[str, float]] = {}
    for value in read_metrics(evaluation_uri):
        if value.slice_key == () and value.model in ("", "candidate") and not value.is_diff:
            table.setdefault(value.output, {})[value.metric] = value.value
    return table


@dataclasses.dataclass(frozen=True)
class CalibrationHistogram:
    """TFMA's calibration plot for one output: fine buckets of the predicted value.

    Arrays have one entry per bucket, in prediction order: example weight, sum of
    labels and sum of predictions of the examples that fell in the bucket.
    """

    slice_key: tuple
    model: str
    output: str
    weights: np.ndarray
    label_sums: np.ndarray
    prediction_sums: np.ndarray


def read_calibration(evaluation_uri: str) -> list[CalibrationHistogram]:
    import tensorflow_model_analysis as tfma

    histograms = []
    for per_slice in tfma.load_plots(evaluation_uri):
        slice_key = _slice_key(per_slice)
        for entry in per_slice.plot_keys_and_values:
            buckets = entry.value.calibration_histogram_buckets.buckets
            if not buckets:
                continue
            histograms.append(CalibrationHistogram(
                slice_key, entry.key.model_name, entry.key.output_name,
                np.array([b.num_weighted_examples.value for b in buckets]),
                np.array([b.total_weighted_label.value for b in buckets]),
                np.array([b.total_weighted_refined_prediction.value for b in buckets])))
    return histograms
