"""The core-target metrics of tfx_pipeline.metrics, and a safe log loss, as TFMA metrics.

In an EvalConfig:

  MetricConfig(class_name="NRMSE", module="tfx_pipeline.tfma_metrics")

Classes and the metric names they report: MeanSquaredErrorOnSample (mse),
MeanAbsoluteErrorOnSample (mae), NRMSE (nrmse), NMAE (nmae), NormalizedGini
(normalized_gini), Spearman (spearman), CalibrationOnSample (calibration),
and for binary outputs SafeLogLoss (log_loss).

SafeLogLoss is TFMA's binary cross-entropy with the probability clipped to
[1e-7, 1 - 1e-7] first: TFMA's own metric computes 0 * log(0) = NaN for a
prediction of exactly 0 or 1, which a step the features nearly determine
produces in float32.

Gini and Spearman need every (label, prediction) pair of a slice, not running
sums, so one combiner gathers the pairs and each metric is a derived
computation that calls the NumPy definition. The combiner's key is the same
for all six, and TFMA runs equal computations once: the pairs are held once per
output and slice (16 bytes per example).

Sample space: with example weights on (MetricsSpec.example_weights.weighted),
the weight selects rows: 0 leaves a row out, any other value keeps it, once.
The pipeline uses a 0/1 label as the weight to score, for example, revenue on
the converted rows only. A slice with no rows reports NaN.
"""

from __future__ import annotations

from array import array
from typing import Callable, Iterable, NamedTuple

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import calibration_histogram, metric_types, metric_util
from tensorflow_model_analysis.proto import metrics_for_slice_pb2

from tfx_pipeline import metrics as numpy_metrics

_SAMPLE_NAME = "_core_target_sample"  # a leading "_" keeps it out of TFMA's output


class _Sample:
    """Labels and predictions of one slice's kept rows, packed, and the sum of the
    weights of every row seen.

    The pairs are packed as float32 (4 bytes a value) while every value is exactly a
    float32, which the labels of tf.Example float features and a model's float32
    outputs always are, and as float64 from the first value that is not (an int64
    label above 2**24, say). So `values()` is always exactly what TFMA passed, in
    half the memory of float64 in the usual case (the Evaluator at 10M rows holds
    8M pairs per output across processes; docs/scale.md).
    """

    __slots__ = ("labels", "predictions", "weight")

    def __init__(self):
        self.labels = array("f")
        self.predictions = array("f")
        self.weight = 0.0

    def add(self, label: float, prediction: float) -> None:
        self.labels.append(label)
        self.predictions.append(prediction)
        if self.labels.typecode == "f" and not (_same(self.labels[-1], label)
                                                and _same(self.predictions[-1], prediction)):
            self.labels.pop()
            self.predictions.pop()
            self.widen()
            self.labels.append(label)
            self.predictions.append(prediction)

    def widen(self) -> None:
        """Switches to float64 storage, keeping the values."""
        if self.labels.typecode == "f":
            self.labels = array("d", self.labels)
            self.predictions = array("d", self.predictions)

    def extend(self, other: "_Sample") -> None:
        if other.labels.typecode != self.labels.typecode:
            self.widen()
            other.widen()
        self.labels.extend(other.labels)
        self.predictions.extend(other.predictions)
        self.weight += other.weight

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, predictions): (n,) float64."""
        dtype = np.float32 if self.labels.typecode == "f" else np.float64
        return (np.frombuffer(self.labels, dtype=dtype).astype(np.float64),
                np.frombuffer(self.predictions, dtype=dtype).astype(np.float64))


def _same(stored: float, given: float) -> bool:
    return stored == given or (stored != stored and given != given)   # NaN is NaN


def _lookup(value, model_name: str, output_name: str):
    """One model's and output's entry of TFMA's labels, predictions or example weights.

    TFMA nests them as {model: {output: array}} with several models (candidate and
    baseline), {output: array} with several outputs, or a bare array."""
    if isinstance(value, dict) and model_name in value:
        value = value[model_name]
    if isinstance(value, dict):
        if output_name not in value:
            raise ValueError(f"TFMA inputs have no output {output_name!r} "
                             f"(they have {sorted(value)})")
        value = value[output_name]
    return value


class _OutputCombiner(beam.CombineFn):
    """Base: reads one output's labels, predictions and weights from TFMA's inputs.

    TFMA calls add_input once per example and slice, so reading is direct
    dictionary access (metric_util's general reader cost ~100 us an example)."""

    def __init__(self, key: metric_types.MetricKey, example_weighted: bool):
        self._key = key
        self._example_weighted = example_weighted

    def _rows(self, element):
        """(labels, predictions, weights) of one example, as float lists of equal length
        (one value each for a scalar output, the usual case)."""
        model, output = self._key.model_name, self._key.output_name
        label = _lookup(element["labels"], model, output)
        prediction = _lookup(element["predictions"], model, output)
        weights = element.get("example_weights") if self._example_weighted else None
        weight = 1.0 if weights is None else _lookup(weights, model, output)
        if _is_one_value(label) and _is_one_value(prediction) and _is_one_value(weight):
            return [_value(label)], [_value(prediction)], [_value(weight)]
        label = np.asarray(label, dtype=np.float64).ravel()
        prediction = np.asarray(prediction, dtype=np.float64).ravel()
        weight = np.broadcast_to(np.asarray(weight, dtype=np.float64).ravel(), label.shape)
        return label.tolist(), prediction.tolist(), weight.tolist()


def _is_one_value(value) -> bool:
    return (value.size == 1) if isinstance(value, np.ndarray) else isinstance(value, float)


def _value(value) -> float:
    return float(value.item()) if isinstance(value, np.ndarray) else value


class _SampleCombiner(_OutputCombiner):
    """Gathers the (label, prediction) pairs of the rows in the sample space."""

    def create_accumulator(self) -> _Sample:
        return _Sample()

    def add_input(self, accumulator: _Sample, element) -> _Sample:
        for label, prediction, weight in zip(*self._rows(element)):
            accumulator.weight += weight
            if weight != 0:
                accumulator.add(label, prediction)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_Sample]) -> _Sample:
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for other in accumulators:
            merged.extend(other)
        return merged

    def extract_output(self, accumulator: _Sample) -> dict:
        return {self._key: SampleValues(*accumulator.values(), accumulator.weight)}


class SampleValues(NamedTuple):
    """A slice's kept rows (labels, predictions: (n,) float64) and its summed weights."""

    labels: np.ndarray
    predictions: np.ndarray
    weight: float


class _DerivedMetric(metric_types.Metric):
    """Base: metric NAME = FUNCTION(state), the state being what COMBINER extracts for
    one output and slice under the private key STATE_NAME. Every metric with the same
    combiner and state name shares one combiner: TFMA runs equal computations once."""

    NAME = ""
    COMBINER: type
    STATE_NAME = ""
    FUNCTION: Callable
    IS_PLOT = False

    def __init__(self, name: str | None = None):
        super().__init__(metric_util.merge_per_key_computations(self._computations),
                         name=name or self.NAME)

    def _computations(self, name: str, eval_config=None, model_name: str = "",
                      output_name: str = "", sub_key=None, example_weighted: bool = False):
        def key(metric_name, kind=metric_types.MetricKey):
            return kind(name=metric_name, model_name=model_name, output_name=output_name,
                        sub_key=sub_key, example_weighted=example_weighted)

        state_key = key(self.STATE_NAME)
        metric_key = key(name, metric_types.PlotKey if self.IS_PLOT else metric_types.MetricKey)
        function = type(self).FUNCTION

        def result(values):
            return {metric_key: function(values[state_key])}

        return [metric_types.MetricComputation(
                    keys=[state_key], preprocessors=None,
                    combiner=self.COMBINER(state_key, example_weighted)),
                metric_types.DerivedMetricComputation(keys=[metric_key], result=result)]


class _SampleMetric(_DerivedMetric):
    """Base: a metric computed by `PAIRS(labels, predictions)` on the gathered pairs."""

    COMBINER = _SampleCombiner
    STATE_NAME = _SAMPLE_NAME
    PAIRS: Callable[[np.ndarray, np.ndarray], float]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "PAIRS" in cls.__dict__:
            pairs = cls.__dict__["PAIRS"]
            cls.FUNCTION = staticmethod(lambda state: pairs(state.labels, state.predictions))


class MeanSquaredErrorOnSample(_SampleMetric):
    NAME = "mse"
    PAIRS = staticmethod(numpy_metrics.mse)


class MeanAbsoluteErrorOnSample(_SampleMetric):
    NAME = "mae"
    PAIRS = staticmethod(numpy_metrics.mae)


class NRMSE(_SampleMetric):
    NAME = "nrmse"
    PAIRS = staticmethod(numpy_metrics.nrmse)


class NMAE(_SampleMetric):
    NAME = "nmae"
    PAIRS = staticmethod(numpy_metrics.nmae)


class NormalizedGini(_SampleMetric):
    NAME = "normalized_gini"
    PAIRS = staticmethod(numpy_metrics.normalized_gini)


class Spearman(_SampleMetric):
    NAME = "spearman"
    PAIRS = staticmethod(numpy_metrics.spearman)


class CalibrationOnSample(_SampleMetric):
    NAME = "calibration"
    PAIRS = staticmethod(numpy_metrics.calibration)


CORE_TARGET_METRICS = (MeanSquaredErrorOnSample, MeanAbsoluteErrorOnSample, NRMSE, NMAE,
                       NormalizedGini, Spearman, CalibrationOnSample)


class SampleExampleCount(_DerivedMetric):
    """Rows (or their summed weights, with example weights on), as TFMA's ExampleCount."""

    NAME = "example_count"
    COMBINER = _SampleCombiner
    STATE_NAME = _SAMPLE_NAME
    FUNCTION = staticmethod(lambda state: float(state.weight))


class SampleMeanLabel(_SampleMetric):
    NAME = "mean_label"
    PAIRS = staticmethod(lambda y, p: float(np.mean(y)) if y.size else float("nan"))


class SampleMeanPrediction(_SampleMetric):
    NAME = "mean_prediction"
    PAIRS = staticmethod(lambda y, p: float(np.mean(p)) if p.size else float("nan"))


SAMPLE_SUMMARY_METRICS = (SampleExampleCount, SampleMeanLabel, SampleMeanPrediction)

LOG_LOSS_EPSILON = 1e-7
HISTOGRAM_BUCKETS = calibration_histogram.DEFAULT_NUM_BUCKETS   # 10,000, as TFMA's AUC
PLOT_BUCKETS = 1000
_HISTOGRAM_NAME = "_binary_output_histogram"
_COMPACT_EVERY = 4096  # pending rows folded into the histogram at a time


class BinaryState(NamedTuple):
    """Everything the binary metrics need from one output and slice.

    weighted_labels, weighted_predictions, weighted_examples: (HISTOGRAM_BUCKETS + 2,)
      sums per prediction bucket, bucketed as TFMA's calibration histogram does
      (bucket 0 below 0, 1..N for [k-1, k) / N, N + 1 from 1 up);
    log_loss: sum of weight * clipped binary cross-entropy.
    """

    weighted_labels: np.ndarray
    weighted_predictions: np.ndarray
    weighted_examples: np.ndarray
    log_loss: float


class _Histogram:
    """Accumulator: rows not yet bucketed (packed float64) and the running sums."""

    __slots__ = ("labels", "predictions", "weights", "sums", "log_loss")

    def __init__(self):
        self.labels, self.predictions, self.weights = array("d"), array("d"), array("d")
        self.sums = None      # (3, HISTOGRAM_BUCKETS + 2) once rows are folded in
        self.log_loss = 0.0


def bucket_index(predictions: np.ndarray, buckets: int = HISTOGRAM_BUCKETS) -> np.ndarray:
    """TFMA's calibration-histogram bucket of each prediction in [0, 1]: int(p * N + 1),
    0 below the range and N + 1 above it."""
    position = predictions / 1.0 * buckets + 1
    return np.where(position < 0, 0, np.where(position >= buckets + 1, buckets + 1,
                                              np.trunc(position))).astype(np.int64)


class _BinaryCombiner(_OutputCombiner):
    """Folds one binary output's rows into a prediction histogram and a log-loss sum."""

    def create_accumulator(self) -> _Histogram:
        return _Histogram()

    def add_input(self, accumulator: _Histogram, element) -> _Histogram:
        label, prediction, weight = self._rows(element)
        accumulator.labels.extend(label)
        accumulator.predictions.extend(prediction)
        accumulator.weights.extend(weight)
        if len(accumulator.labels) >= _COMPACT_EVERY:
            self._fold(accumulator)
        return accumulator

    def _fold(self, accumulator: _Histogram) -> None:
        y = np.frombuffer(accumulator.labels, dtype=np.float64)
        p = np.frombuffer(accumulator.predictions, dtype=np.float64)
        w = np.frombuffer(accumulator.weights, dtype=np.float64)
        if np.isnan(p).any():
            raise ValueError(f"output {self._key.output_name!r} predicted NaN for "
                             f"{int(np.isnan(p).sum())} example(s)")
        size = HISTOGRAM_BUCKETS + 2
        index = bucket_index(p)
        sums = np.stack([np.bincount(index, y * w, size), np.bincount(index, p * w, size),
                         np.bincount(index, w, size)])
        accumulator.sums = sums if accumulator.sums is None else accumulator.sums + sums
        clipped = np.clip(p, LOG_LOSS_EPSILON, 1 - LOG_LOSS_EPSILON)
        losses = -(y * np.log(clipped) + (1 - y) * np.log1p(-clipped))
        accumulator.log_loss += float(np.sum(w * losses))
        accumulator.labels, accumulator.predictions = array("d"), array("d")
        accumulator.weights = array("d")

    def compact(self, accumulator: _Histogram) -> _Histogram:
        if len(accumulator.labels):
            self._fold(accumulator)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_Histogram]) -> _Histogram:
        merged = _Histogram()
        for other in accumulators:
            self.compact(other)
            if other.sums is not None:
                merged.sums = other.sums if merged.sums is None else merged.sums + other.sums
            merged.log_loss += other.log_loss
        return merged

    def extract_output(self, accumulator: _Histogram) -> dict:
        self.compact(accumulator)
        sums = (accumulator.sums if accumulator.sums is not None
                else np.zeros((3, HISTOGRAM_BUCKETS + 2)))
        return {self._key: BinaryState(sums[0], sums[1], sums[2], accumulator.log_loss)}


def rebin(state: BinaryState, thresholds) -> np.ndarray:
    """(3, len(thresholds)) sums of the fine buckets regrouped onto `thresholds`, as
    TFMA's calibration_histogram.rebin does: bucket i of the result gathers the fine
    buckets whose lower edge p satisfies thresholds[i] <= p < thresholds[i + 1]
    (below the first threshold into 0, from the last one on into the last), in
    bucket order so that the sums add up in the same order as TFMA's loop."""
    buckets = HISTOGRAM_BUCKETS
    edges = np.concatenate([[-np.inf], np.arange(buckets) / buckets * 1.0, [np.inf]])
    target = np.minimum(np.searchsorted(np.asarray(thresholds[1:]), edges, side="right"),
                        len(thresholds) - 1)
    sums = np.stack([state.weighted_labels, state.weighted_predictions, state.weighted_examples])
    return np.stack([np.bincount(target, row, len(thresholds)) for row in sums])


_EPSILON = 1e-7  # TFMA's fence between histogram and confusion-matrix intervals
_AUC_THRESHOLDS = ([-_EPSILON] + [(i + 1) / (HISTOGRAM_BUCKETS - 1)
                                  for i in range(HISTOGRAM_BUCKETS - 2)] + [1.0 + _EPSILON])
_AUC_REBIN_THRESHOLDS = [t + _EPSILON if t != 0 else t for t in _AUC_THRESHOLDS]


def auc(state: BinaryState) -> float:
    """ROC AUC as TFMA's AUC metric computes it (10,000 thresholds, trapezoid rule):
    the histogram rebinned onto the thresholds, confusion matrices from it, then the
    area under (false-positive rate, recall)."""
    labels, _, examples = rebin(state, _AUC_REBIN_THRESHOLDS)
    positives, negatives = labels, examples - labels
    tp = np.cumsum(positives[::-1])[::-1]                 # positives at or above bucket i
    fp = np.cumsum(negatives[::-1])[::-1]
    fn = np.concatenate([[0.0], np.cumsum(positives)[:-1]])
    tn = np.concatenate([[0.0], np.cumsum(negatives)[:-1]])
    tp, fp, fn, tn = (a[:len(_AUC_THRESHOLDS)] for a in (tp, fp, fn, tn))
    # The last threshold (1 + epsilon) lies above every prediction.
    tp[-1], fp[-1], fn[-1], tn[-1] = 0.0, 0.0, tp[0], fp[0]
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) != 0)
    fp_rate = np.divide(fp, fp + tn, out=np.zeros_like(fp), where=(fp + tn) != 0)
    return float(np.nansum((fp_rate[:-1] - fp_rate[1:]) * (recall[:-1] + recall[1:]) / 2.0))


def calibration_plot(state: BinaryState) -> metrics_for_slice_pb2.CalibrationHistogramBuckets:
    """TFMA's calibration plot: PLOT_BUCKETS equal-width buckets on [0, 1] plus the two
    open ends, as CalibrationHistogramBuckets (what tfma.load_plots returns)."""
    thresholds = [float("-inf")] + [i / PLOT_BUCKETS for i in range(PLOT_BUCKETS + 1)]
    labels, predictions, examples = rebin(state, thresholds)
    plot = metrics_for_slice_pb2.CalibrationHistogramBuckets()
    uppers = thresholds[1:] + [float("inf")]
    for i, (lower, upper) in enumerate(zip(thresholds, uppers)):
        plot.buckets.add(lower_threshold_inclusive=lower, upper_threshold_exclusive=upper,
                         total_weighted_label={"value": labels[i]},
                         total_weighted_refined_prediction={"value": predictions[i]},
                         num_weighted_examples={"value": examples[i]})
    return plot


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN where TFMA's calibration metrics give NaN (≈ 0)."""
    return float("nan") if np.isclose(denominator, 0.0) else numerator / denominator


class _BinaryMetric(_DerivedMetric):
    """Base: a metric of one binary output computed from its BinaryState."""

    COMBINER = _BinaryCombiner
    STATE_NAME = _HISTOGRAM_NAME


class BinaryExampleCount(_BinaryMetric):
    """Rows (or their summed weights, with example weights on), as TFMA's ExampleCount."""

    NAME = "example_count"
    FUNCTION = staticmethod(lambda s: float(s.weighted_examples.sum()))


class BinaryAUC(_BinaryMetric):
    NAME = "auc"
    FUNCTION = staticmethod(auc)


class SafeLogLoss(_BinaryMetric):
    """Mean binary cross-entropy of probabilities clipped to [1e-7, 1 - 1e-7]."""

    NAME = "log_loss"
    FUNCTION = staticmethod(lambda s: (s.log_loss / s.weighted_examples.sum()
                                       if s.weighted_examples.sum() > 0 else float("nan")))


class BinaryCalibration(_BinaryMetric):
    """Mean prediction / mean label, as TFMA's Calibration."""

    NAME = "calibration"
    FUNCTION = staticmethod(lambda s: _ratio(s.weighted_predictions.sum(),
                                             s.weighted_labels.sum()))


class BinaryMeanLabel(_BinaryMetric):
    NAME = "mean_label"
    FUNCTION = staticmethod(lambda s: _ratio(s.weighted_labels.sum(), s.weighted_examples.sum()))


class BinaryMeanPrediction(_BinaryMetric):
    NAME = "mean_prediction"
    FUNCTION = staticmethod(lambda s: _ratio(s.weighted_predictions.sum(),
                                             s.weighted_examples.sum()))


class BinaryCalibrationPlot(_BinaryMetric):
    NAME = "calibration_plot"
    FUNCTION = staticmethod(calibration_plot)
    IS_PLOT = True


BINARY_OUTPUT_METRICS = (BinaryExampleCount, BinaryAUC, SafeLogLoss, BinaryCalibration,
                         BinaryMeanLabel, BinaryMeanPrediction, BinaryCalibrationPlot)


for _metric in CORE_TARGET_METRICS + SAMPLE_SUMMARY_METRICS + BINARY_OUTPUT_METRICS:
    metric_types.register_metric(_metric)
