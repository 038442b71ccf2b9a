"""Builds the TFMA EvalConfig from the dataset spec (never written by hand).

Every binary step gets AUC, log loss, mean label/prediction and example count
on its marginal output; the core target gets MSE and MAE. A lower bound on each
step's AUC decides the blessing.
"""

from __future__ import annotations

import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.proto import config_pb2

from keras_models.layout import pred_key, prob_key
from transform.spec import DatasetSpec

BINARY_METRICS = ("ExampleCount", "AUC", "BinaryCrossEntropy", "MeanLabel", "MeanPrediction")
REGRESSION_METRICS = ("ExampleCount", "MeanSquaredError", "MeanAbsoluteError", "MeanLabel",
                      "MeanPrediction")


def build_eval_config(spec: DatasetSpec, min_auc: float = 0.5) -> tfma.EvalConfig:
    chain = spec.chain
    label_keys = {prob_key(step): step for step in chain.steps}
    if chain.core_target:
        label_keys[pred_key(chain.core_target)] = chain.core_target
    # The gate looks at the overall slice only: small slices are too noisy to veto a model.
    auc_gate = [config_pb2.PerSliceMetricThreshold(
        slicing_specs=[tfma.SlicingSpec()],
        threshold=tfma.MetricThreshold(
            value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_auc})))]
    metrics_specs = []
    for step in chain.steps:
        metrics_specs.append(tfma.MetricsSpec(
            output_names=[prob_key(step)],
            metrics=[tfma.MetricConfig(class_name=name,
                                       per_slice_thresholds=auc_gate if name == "AUC" else None)
                     for name in BINARY_METRICS]))
    if chain.core_target:
        metrics_specs.append(tfma.MetricsSpec(
            output_names=[pred_key(chain.core_target)],
            metrics=[tfma.MetricConfig(class_name=name) for name in REGRESSION_METRICS]))
    slicing_specs = [tfma.SlicingSpec()]
    slicing_specs += [tfma.SlicingSpec(feature_keys=list(cross)) for cross in spec.slices]
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_keys=label_keys)],
        slicing_specs=slicing_specs,
        metrics_specs=metrics_specs)
