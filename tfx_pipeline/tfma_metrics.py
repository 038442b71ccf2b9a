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
from typing import Callable, Iterable

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util

from tfx_pipeline import metrics as numpy_metrics

_SAMPLE_NAME = "_core_target_sample"  # a leading "_" keeps it out of TFMA's output


class _Sample:
    """Labels and predictions of one slice, as packed float64 arrays (8 bytes a value)."""

    __slots__ = ("labels", "predictions")

    def __init__(self):
        self.labels = array("d")
        self.predictions = array("d")


class _OutputCombiner(beam.CombineFn):
    """Base: reads one output's labels, predictions and weights from TFMA's inputs."""

    def __init__(self, key: metric_types.MetricKey, eval_config, example_weighted: bool):
        self._key = key
        self._eval_config = eval_config
        self._example_weighted = example_weighted

    def _rows(self, element):
        """(labels, predictions, weights) float64 arrays of the same shape, per entry."""
        for label, prediction, weight in metric_util.to_label_prediction_example_weight(
                element, eval_config=self._eval_config, model_name=self._key.model_name,
                output_name=self._key.output_name, example_weighted=self._example_weighted,
                flatten=False):
            label = np.asarray(label, dtype=np.float64).ravel()
            prediction = np.asarray(prediction, dtype=np.float64).ravel()
            yield label, prediction, np.broadcast_to(
                np.asarray(weight, dtype=np.float64).ravel(), label.shape)


class _SampleCombiner(_OutputCombiner):
    """Gathers the (label, prediction) pairs of the rows in the sample space."""

    def create_accumulator(self) -> _Sample:
        return _Sample()

    def add_input(self, accumulator: _Sample, element) -> _Sample:
        for label, prediction, weight in self._rows(element):
            keep = weight != 0
            accumulator.labels.frombytes(label[keep].tobytes())
            accumulator.predictions.frombytes(prediction[keep].tobytes())
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_Sample]) -> _Sample:
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for other in accumulators:
            merged.labels.extend(other.labels)
            merged.predictions.extend(other.predictions)
        return merged

    def extract_output(self, accumulator: _Sample) -> dict:
        return {self._key: (np.frombuffer(accumulator.labels, dtype=np.float64),
                            np.frombuffer(accumulator.predictions, dtype=np.float64))}


class _SampleMetric(metric_types.Metric):
    """Base: a metric computed by `FUNCTION(labels, predictions)` on the gathered pairs."""

    NAME = ""
    FUNCTION: Callable[[np.ndarray, np.ndarray], float]

    def __init__(self, name: str | None = None):
        super().__init__(metric_util.merge_per_key_computations(self._computations),
                         name=name or self.NAME)

    def _computations(self, name: str, eval_config=None, model_name: str = "",
                      output_name: str = "", sub_key=None, example_weighted: bool = False):
        def key(metric_name):
            return metric_types.MetricKey(name=metric_name, model_name=model_name,
                                          output_name=output_name, sub_key=sub_key,
                                          example_weighted=example_weighted)

        sample_key, metric_key = key(_SAMPLE_NAME), key(name)
        function = type(self).FUNCTION

        def result(values):
            labels, predictions = values[sample_key]
            return {metric_key: function(labels, predictions)}

        return [metric_types.MetricComputation(
                    keys=[sample_key], preprocessors=None,
                    combiner=_SampleCombiner(sample_key, eval_config, example_weighted)),
                metric_types.DerivedMetricComputation(keys=[metric_key], result=result)]


class MeanSquaredErrorOnSample(_SampleMetric):
    NAME = "mse"
    FUNCTION = staticmethod(numpy_metrics.mse)


class MeanAbsoluteErrorOnSample(_SampleMetric):
    NAME = "mae"
    FUNCTION = staticmethod(numpy_metrics.mae)


class NRMSE(_SampleMetric):
    NAME = "nrmse"
    FUNCTION = staticmethod(numpy_metrics.nrmse)


class NMAE(_SampleMetric):
    NAME = "nmae"
    FUNCTION = staticmethod(numpy_metrics.nmae)


class NormalizedGini(_SampleMetric):
    NAME = "normalized_gini"
    FUNCTION = staticmethod(numpy_metrics.normalized_gini)


class Spearman(_SampleMetric):
    NAME = "spearman"
    FUNCTION = staticmethod(numpy_metrics.spearman)


class CalibrationOnSample(_SampleMetric):
    NAME = "calibration"
    FUNCTION = staticmethod(numpy_metrics.calibration)


CORE_TARGET_METRICS = (MeanSquaredErrorOnSample, MeanAbsoluteErrorOnSample, NRMSE, NMAE,
                       NormalizedGini, Spearman, CalibrationOnSample)

LOG_LOSS_EPSILON = 1e-7


class _LogLossCombiner(_OutputCombiner):
    """Running (weighted sum of clipped log loss, sum of weights) of one output and slice."""

    def create_accumulator(self):
        return [0.0, 0.0]

    def add_input(self, accumulator, element):
        for y, p, w in self._rows(element):
            p = np.clip(p, LOG_LOSS_EPSILON, 1 - LOG_LOSS_EPSILON)
            losses = -(y * np.log(p) + (1 - y) * np.log1p(-p))
            accumulator[0] += float(np.sum(w * losses))
            accumulator[1] += float(np.sum(w))
        return accumulator

    def merge_accumulators(self, accumulators):
        total = [0.0, 0.0]
        for loss, weight in accumulators:
            total[0] += loss
            total[1] += weight
        return total

    def extract_output(self, accumulator) -> dict:
        loss, weight = accumulator
        return {self._key: loss / weight if weight > 0 else float("nan")}


class SafeLogLoss(metric_types.Metric):
    """Mean binary cross-entropy of probabilities clipped to [1e-7, 1 - 1e-7]."""

    NAME = "log_loss"

    def __init__(self, name: str | None = None):
        super().__init__(metric_util.merge_per_key_computations(self._computations),
                         name=name or self.NAME)

    def _computations(self, name: str, eval_config=None, model_name: str = "",
                      output_name: str = "", sub_key=None, example_weighted: bool = False):
        key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name,
                                     sub_key=sub_key, example_weighted=example_weighted)
        return [metric_types.MetricComputation(
            keys=[key], preprocessors=None,
            combiner=_LogLossCombiner(key, eval_config, example_weighted))]


for _metric in CORE_TARGET_METRICS + (SafeLogLoss,):
    metric_types.register_metric(_metric)
