"""The EvalConfig generated from a spec, gate messages, and the report's calibration bins."""

import numpy as np
import pytest
from tensorflow_model_analysis.proto import config_pb2, validation_result_pb2

from tfx_pipeline import results
from tfx_pipeline.eval_config import Gates, build_eval_config
from tfx_pipeline.report import calibration_bins
from transform.datasets import hillstrom


@pytest.fixture(scope="module")
def config():
    return build_eval_config(hillstrom.SPEC, Gates(min_auc=0.6, max_auc_drop=0.01,
                                                   max_gini_drop=0.03))


def thresholds(config, output, metric):
    spec = next(s for s in config.metrics_specs if list(s.output_names) == [output])
    metric_config = next(m for m in spec.metrics if m.class_name == metric)
    return [t.threshold for t in metric_config.per_slice_thresholds]


def test_each_output_has_its_label_and_sample_space(config):
    (model,) = config.model_specs
    assert model.signature_name == "evaluation"
    assert dict(model.label_keys) == {
        "visit_prob": "visit", "conversion_prob": "conversion",
        "conversion_prob_given_visit": "conversion", "spend_pred": "spend",
        "spend_pred_given_conversion": "spend"}
    # The conditional outputs count only rows where the previous step happened.
    assert dict(model.example_weight_keys) == {"conversion_prob_given_visit": "visit",
                                               "spend_pred_given_conversion": "conversion"}
    weighted = {s.output_names[0]: (s.example_weights.weighted, s.example_weights.unweighted)
                for s in config.metrics_specs}
    assert weighted == {"visit_prob": (False, True), "conversion_prob": (False, True),
                        "conversion_prob_given_visit": (True, False),
                        "spend_pred": (False, True), "spend_pred_given_conversion": (True, False)}


def test_metrics_per_kind(config):
    by_output = {s.output_names[0]: [m.class_name for m in s.metrics] for s in config.metrics_specs}
    for output in ("visit_prob", "conversion_prob", "conversion_prob_given_visit"):
        assert by_output[output] == ["BinaryExampleCount", "BinaryAUC", "SafeLogLoss",
                                     "BinaryCalibration", "BinaryMeanLabel",
                                     "BinaryMeanPrediction", "BinaryCalibrationPlot"]
    for output in ("spend_pred", "spend_pred_given_conversion"):
        assert by_output[output] == ["SampleExampleCount", "MeanSquaredErrorOnSample",
                                     "MeanAbsoluteErrorOnSample", "NRMSE", "NMAE",
                                     "NormalizedGini", "Spearman", "CalibrationOnSample",
                                     "SampleMeanLabel", "SampleMeanPrediction"]
    # All of them are the project's (one combiner per output kind; tfx_pipeline.tfma_metrics).
    assert {m.module for s in config.metrics_specs for m in s.metrics} == {
        "tfx_pipeline.tfma_metrics"}


def test_slices_come_from_the_spec_including_a_cross(config):
    keys = [list(s.feature_keys) for s in config.slicing_specs]
    assert keys == [[], ["treatment"], ["channel"], ["zip_code"], ["newbie"],
                    ["history_segment"], ["treatment", "channel"]]


def test_gates_on_all_rows_outputs_overall_slice(config):
    for output in ("visit_prob", "conversion_prob"):
        (threshold,) = thresholds(config, output, "BinaryAUC")
        assert threshold.value_threshold.lower_bound.value == pytest.approx(0.6)
        assert threshold.change_threshold.absolute.value == pytest.approx(-0.01)
        assert threshold.change_threshold.direction == config_pb2.MetricDirection.HIGHER_IS_BETTER
    (gini,) = thresholds(config, "spend_pred", "NormalizedGini")
    assert gini.change_threshold.absolute.value == pytest.approx(-0.03)
    assert not gini.HasField("value_threshold")
    (calibration,) = thresholds(config, "spend_pred", "CalibrationOnSample")
    assert calibration.value_threshold.lower_bound.value == pytest.approx(0.8)
    assert calibration.value_threshold.upper_bound.value == pytest.approx(1.25)
    (nrmse,) = thresholds(config, "spend_pred", "NRMSE")
    assert nrmse.value_threshold.upper_bound.value == pytest.approx(1.0)
    assert not nrmse.value_threshold.HasField("lower_bound")
    # Narrow sample spaces are reported, not gated: their counts are small.
    assert thresholds(config, "conversion_prob_given_visit", "BinaryAUC") == []
    assert thresholds(config, "spend_pred_given_conversion", "NormalizedGini") == []
    spec = next(s for s in config.metrics_specs if s.output_names[0] == "visit_prob")
    auc = next(m for m in spec.metrics if m.class_name == "BinaryAUC")
    assert list(auc.per_slice_thresholds[0].slicing_specs) == [config_pb2.SlicingSpec()]


def test_failure_messages_name_output_metric_value_and_bound():
    failure = validation_result_pb2.ValidationFailure()
    failure.metric_key.output_name = "visit_prob"
    failure.metric_key.name = "auc"
    failure.metric_value.double_value.value = -0.0312
    failure.metric_threshold.change_threshold.absolute.value = -0.02
    assert results.describe_failure(failure, "Overall") == (
        "visit_prob auc changed by -0.0312 against the latest blessed model on slice Overall; "
        "the gate allows at least -0.02")
    failure.metric_threshold.Clear()
    failure.metric_value.double_value.value = 0.51
    failure.metric_threshold.value_threshold.lower_bound.value = 0.55
    assert results.describe_failure(failure, "Overall") == (
        "visit_prob auc = 0.5100 on slice Overall, required >= 0.55")


def test_nan_failure_names_the_reason():
    failure = validation_result_pb2.ValidationFailure()
    failure.metric_key.output_name = "spend_pred"
    failure.metric_key.name = "calibration"
    failure.metric_value.double_value.value = float("nan")
    failure.metric_threshold.value_threshold.lower_bound.value = 0.8
    message = results.describe_failure(failure, "Overall")
    assert message.startswith("spend_pred calibration is NaN on slice Overall: the metric is "
                              "undefined there")


@pytest.mark.parametrize("metric,value,passes", [
    ("calibration", 1.0, True), ("calibration", 0.79, False), ("calibration", 1.26, False),
    ("calibration", float("nan"), False), ("nrmse", 0.99, True), ("nrmse", 1.01, False),
    ("nrmse", float("nan"), False)])
def test_tfma_validator_applies_the_core_gates(config, metric, value, passes):
    """TFMA's own validator on the generated config: out-of-band and NaN values fail."""
    from tensorflow_model_analysis.evaluators import metrics_validator
    from tensorflow_model_analysis.metrics import metric_types

    key = metric_types.MetricKey(name=metric, output_name="spend_pred", example_weighted=False)
    result = metrics_validator.validate_metrics(((), {key: value}), config)
    failed = [(f.metric_key.output_name, f.metric_key.name)
              for s in result.metric_validations_per_slice for f in s.failures]
    assert (("spend_pred", metric) not in failed) == passes


def test_calibration_bins_merge_buckets_by_equal_weight():
    # Four buckets of weight 1, 1, 2, 4 into 2 groups: the cut falls at half the weight (4).
    weights = [1, 1, 2, 4]
    labels = [0, 1, 1, 3]
    predictions = [0.1, 0.2, 0.6, 2.0]
    predicted, observed, weight = calibration_bins(weights, labels, predictions, bins=2)
    np.testing.assert_allclose(weight, [4, 4])
    np.testing.assert_allclose(predicted, [0.9 / 4, 2.0 / 4])
    np.testing.assert_allclose(observed, [2 / 4, 3 / 4])


def test_calibration_bins_skip_empty_groups_and_empty_histograms():
    predicted, observed, weight = calibration_bins([0, 5, 0], [0, 2, 0], [0, 1.5, 0], bins=10)
    np.testing.assert_allclose(weight, [5])
    np.testing.assert_allclose(predicted, [0.3])
    np.testing.assert_allclose(observed, [0.4])
    assert calibration_bins([0, 0], [0, 0], [0, 0])[0].size == 0


def test_calibration_warnings_state_the_label_means_standard_error():
    """Binary: sd = sqrt(0.01 * 0.99), n = 10,000 -> 0.0995 / (0.01 * 100) = 9.95 %.
    Core: sd = sqrt(144) / 0.96 = 12.5, mean 0.5, n = 40,000 -> 12.5 / (0.5 * 200) = 12.5 %."""
    overall = {
        "buy_prob": {"auc": 0.7, "calibration": 0.85, "example_count": 10000.0,
                     "mean_label": 0.01},
        "amount_pred": {"calibration": 1.2, "example_count": 40000.0, "mean_label": 0.5,
                        "mse": 144.0, "nrmse": 0.96},
        "click_prob": {"auc": 0.7, "calibration": 1.0, "example_count": 100.0, "mean_label": 0.1},
    }
    assert results.label_mean_standard_error(overall["buy_prob"]) == pytest.approx(0.0995, rel=1e-3)
    assert results.label_mean_standard_error(overall["amount_pred"]) == pytest.approx(0.125)
    assert results.label_mean_standard_error({"calibration": 1.0}) is None
    assert results.calibration_warnings(overall) == [
        "amount_pred: calibration 1.200 outside 0.9-1.1 (over-predicts by 20%; the eval rows' "
        "mean label alone has a standard error of 12%)",
        "buy_prob: calibration 0.850 outside 0.9-1.1 (under-predicts by 15%; the eval rows' "
        "mean label alone has a standard error of 10%)"]
