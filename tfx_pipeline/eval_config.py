"""Builds the TFMA EvalConfig from the dataset spec (never written by hand).

TFMA reads the SavedModel's `evaluation` signature, whose outputs are listed by
`TaskLayout.evaluation_outputs`: each is a prediction, a label and a sample
space. A narrower sample space (CVR on clicked rows, revenue on converted
rows) is an example weight: the 0/1 label of the step that selects the rows.

  binary outputs      example_count, auc, log_loss (clipped, never NaN;
                      tfx_pipeline.tfma_metrics), calibration (mean prediction /
                      mean label), mean_label, mean_prediction, and a
                      calibration plot
  regression outputs  example_count, mse, mae, nrmse, nmae, normalized_gini,
                      spearman, calibration (tfx_pipeline.tfma_metrics),
                      mean_label, mean_prediction

Every output is sliced by the spec's slices (crosses included). `Gates`
decides the blessing; gates look at the overall slice only, where the counts
are large enough to tell a worse model from noise. Every gate is a TFMA
threshold, and TFMA fails a threshold whose metric is NaN (no comparison with
NaN holds), so an undefined metric is never blessed.
"""

from __future__ import annotations

import dataclasses

from tensorflow_model_analysis.proto import config_pb2

from keras_models.layout import EvalOutput
from serving.export import EVAL_SIGNATURE
from tfx_pipeline.trainer import task_layout_for
from transform.spec import DatasetSpec

CUSTOM_METRICS_MODULE = "tfx_pipeline.tfma_metrics"
# Every metric is one of tfx_pipeline.tfma_metrics: per output and slice, the binary
# metrics share one histogram combiner and the regression metrics one sample
# combiner, so TFMA runs two kinds of combiner instead of one per metric.
BINARY_METRICS = ("BinaryExampleCount", "BinaryAUC", "SafeLogLoss", "BinaryCalibration",
                  "BinaryMeanLabel", "BinaryMeanPrediction", "BinaryCalibrationPlot")
REGRESSION_METRICS = ("SampleExampleCount", "MeanSquaredErrorOnSample",
                      "MeanAbsoluteErrorOnSample", "NRMSE", "NMAE", "NormalizedGini", "Spearman",
                      "CalibrationOnSample", "SampleMeanLabel", "SampleMeanPrediction")


@dataclasses.dataclass(frozen=True)
class Gates:
    """What a candidate must reach to be blessed (and pushed).

    Attributes:
      min_auc: lower bound on each step's AUC on all rows.
      max_auc_drop: how far each step's AUC on all rows may fall below the latest
        blessed model's on the same evaluation data.
      max_gini_drop: the same for the core target's normalised Gini on all rows.
      core_calibration: (low, high) band for the core target's mean prediction /
        mean label on all rows: a head off by a factor is refused.
      max_core_nrmse: upper bound on the core target's NRMSE on all rows; 1.0 is
        the error of predicting the mean for every row.
    The change gates apply from the second blessed run on; the first run has
    no baseline and is judged by the absolute gates alone.
    """

    min_auc: float = 0.55
    max_auc_drop: float = 0.02
    max_gini_drop: float = 0.05
    core_calibration: tuple[float, float] = (0.8, 1.25)
    max_core_nrmse: float = 1.0


def _overall(threshold: config_pb2.MetricThreshold) -> list:
    return [config_pb2.PerSliceMetricThreshold(slicing_specs=[config_pb2.SlicingSpec()],
                                               threshold=threshold)]


def _no_worse_than_baseline(by: float) -> config_pb2.GenericChangeThreshold:
    return config_pb2.GenericChangeThreshold(direction=config_pb2.MetricDirection.HIGHER_IS_BETTER,
                                       absolute={"value": -by})


def _thresholds(output: EvalOutput, metric: str, gates: Gates):
    """Per-slice thresholds for one metric of one output, or None."""
    if output.condition:
        return None
    if metric == "BinaryAUC":
        return _overall(config_pb2.MetricThreshold(
            value_threshold=config_pb2.GenericValueThreshold(lower_bound={"value": gates.min_auc}),
            change_threshold=_no_worse_than_baseline(gates.max_auc_drop)))
    if metric == "NormalizedGini":
        return _overall(config_pb2.MetricThreshold(
            change_threshold=_no_worse_than_baseline(gates.max_gini_drop)))
    if metric == "CalibrationOnSample":
        low, high = gates.core_calibration
        return _overall(config_pb2.MetricThreshold(value_threshold=config_pb2.GenericValueThreshold(
            lower_bound={"value": low}, upper_bound={"value": high})))
    if metric == "NRMSE":
        return _overall(config_pb2.MetricThreshold(value_threshold=config_pb2.GenericValueThreshold(
            upper_bound={"value": gates.max_core_nrmse})))
    return None


def _metrics_spec(output: EvalOutput, gates: Gates) -> config_pb2.MetricsSpec:
    names = BINARY_METRICS if output.kind == "binary" else REGRESSION_METRICS
    metrics = [config_pb2.MetricConfig(class_name=name, module=CUSTOM_METRICS_MODULE,
                                       per_slice_thresholds=_thresholds(output, name, gates))
               for name in names]
    # The weight of a conditional output is the 0/1 label that selects its rows.
    weights = config_pb2.ExampleWeightOptions(weighted=bool(output.condition),
                                        unweighted=not output.condition)
    return config_pb2.MetricsSpec(output_names=[output.name], metrics=metrics, example_weights=weights)


def build_eval_config(spec: DatasetSpec, gates: Gates = Gates()) -> config_pb2.EvalConfig:
    layout = task_layout_for(spec)
    outputs = layout.evaluation_outputs
    model_spec = config_pb2.ModelSpec(
        signature_name=EVAL_SIGNATURE,
        label_keys={o.name: o.label for o in outputs},
        example_weight_keys={o.name: o.condition for o in outputs if o.condition})
    slicing_specs = [config_pb2.SlicingSpec()]
    slicing_specs += [config_pb2.SlicingSpec(feature_keys=list(cross)) for cross in spec.slices]
    return config_pb2.EvalConfig(model_specs=[model_spec], slicing_specs=slicing_specs,
                           metrics_specs=[_metrics_spec(o, gates) for o in outputs])
