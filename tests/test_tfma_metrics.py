"""The core-target TFMA metrics equal their NumPy / scikit-learn / SciPy references.

The combiner is driven the way TFMA drives it (standard metric inputs, split
accumulators merged), and once inside a real Beam pipeline.
"""

import math

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing import util as beam_util
from scipy import stats
from sklearn import metrics as sk
from tensorflow_model_analysis.metrics import metric_types, metric_util

from tfx_pipeline import metrics as numpy_metrics
from tfx_pipeline import tfma_metrics

METRICS = {cls.NAME: cls for cls in tfma_metrics.CORE_TARGET_METRICS}


def reference(name, y, p):
    """Independent references: scikit-learn, SciPy, or the formula written out."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    if y.size == 0:
        return math.nan
    if name == "mse":
        return sk.mean_squared_error(y, p)
    if name == "mae":
        return sk.mean_absolute_error(y, p)
    if name == "nrmse":
        return math.sqrt(sk.mean_squared_error(y, p)) / y.std() if y.std() > 0 else math.nan
    if name == "nmae":
        spread = np.mean(np.abs(y - y.mean()))
        return sk.mean_absolute_error(y, p) / spread if spread > 0 else math.nan
    if name == "spearman":
        if len(set(y)) < 2 or len(set(p)) < 2:
            return math.nan
        return stats.spearmanr(y, p).statistic
    if name == "normalized_gini":
        return gini_by_pairs(y, p)
    if name == "calibration":
        return p.sum() / y.sum() if y.sum() else math.nan
    raise KeyError(name)


def gini_by_pairs(y, p):
    """Normalised Gini by pairwise comparison, an algorithm independent of the sort in
    tfx_pipeline.metrics: raw Gini = sum_i sum_j y_i sign(p_i - p_j) / (n sum y), which
    equals 2 * (trapezoid area under the Lorenz curve) - 1 with ties sharing mid-ranks."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    if y.sum() <= 0:
        return math.nan

    def raw(key):
        return sum(y[i] * np.sign(key[i] - key[j]) for i in range(len(y))
                   for j in range(len(y))) / (len(y) * y.sum())

    perfect = raw(y)
    return raw(p) / perfect if perfect > 1e-12 else math.nan


def combine(combiner, labels, predictions, weights, splits):
    """One example per row through `combiner` as TFMA feeds it, in `splits` accumulators
    merged at the end (several workers: order must not matter); its extracted output."""
    inputs = [metric_util.to_standard_metric_inputs({
        "labels": np.array([y], np.float32), "predictions": np.array([p], np.float32),
        "example_weights": np.array([1.0 if weights is None else weights[i]], np.float32)})
        for i, (y, p) in enumerate(zip(labels, predictions))]
    accumulators = []
    for part in range(splits):
        accumulator = combiner.create_accumulator()
        for element in inputs[part::splits]:
            accumulator = combiner.add_input(accumulator, element)
        accumulators.append(accumulator)
    return combiner.extract_output(combiner.merge_accumulators(accumulators))


def run_combiner(name, labels, predictions, weights=None, weighted=False, splits=3):
    """Feeds examples through the metric's computations as TFMA does; returns the value."""
    sample, derived = METRICS[name]().computations(example_weighted=weighted)
    values = combine(sample.combiner, labels, predictions, weights, splits)
    (key,) = derived.keys
    return derived.result(values)[key]


RNG = np.random.default_rng(3)
SPEND = np.where(RNG.random(40) < 0.3, RNG.lognormal(3, 1, 40), 0.0).round(2)
PREDICTED = (SPEND * RNG.uniform(0.5, 1.5, 40) + RNG.uniform(0, 5, 40)).round(1)
CASES = {
    "zero_heavy": (SPEND, PREDICTED),
    "ties_in_predictions": (SPEND, np.floor(PREDICTED / 20) * 20),
    "hand_sized": ([0.0, 10.0, 0.0, 30.0], [1.0, 8.0, 2.0, 20.0]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(METRICS))
def test_metric_equals_reference(name, case):
    y, p = CASES[case]
    expected = reference(name, np.float32(y), np.float32(p))
    assert run_combiner(name, y, p) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_hand_computed_values():
    y, p = CASES["hand_sized"]
    # errors -1, 2, -2, 10: MSE (1+4+4+100)/4, MAE 15/4
    assert run_combiner("mse", y, p) == pytest.approx(27.25)
    assert run_combiner("mae", y, p) == pytest.approx(3.75)
    # y mean 10, std sqrt(150), mean |y - 10| = 10
    assert run_combiner("nrmse", y, p) == pytest.approx(math.sqrt(27.25) / math.sqrt(150))
    assert run_combiner("nmae", y, p) == pytest.approx(0.375)
    # the prediction order is a perfect order of the truth: Gini 1
    assert run_combiner("normalized_gini", y, p) == pytest.approx(1.0)
    # but the two zero labels tie: ranks (1.5, 3, 1.5, 4) vs (1, 3, 2, 4), r = 4.5 / sqrt(4.5 * 5)
    assert run_combiner("spearman", y, p) == pytest.approx(4.5 / math.sqrt(22.5))


@pytest.mark.parametrize("name", sorted(METRICS))
def test_weights_select_the_sample_space(name):
    y, p = CASES["zero_heavy"]
    converted = (y > 0).astype(float)
    expected = reference(name, np.float32(y[y > 0]), np.float32(p[y > 0]))
    got = run_combiner(name, y, p, weights=converted, weighted=True)
    assert got == pytest.approx(expected, rel=1e-6)
    # Unweighted computations ignore the weight: all rows count.
    assert run_combiner(name, y, p, weights=converted) == pytest.approx(
        reference(name, np.float32(y), np.float32(p)), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_empty_slice_is_nan(name):
    y, p = CASES["hand_sized"]
    assert math.isnan(run_combiner(name, y, p, weights=[0, 0, 0, 0], weighted=True))
    assert math.isnan(run_combiner(name, [], [], splits=1))


@pytest.mark.parametrize("name", sorted(METRICS))
def test_single_valued_slice(name):
    """All-zero truth (no buyer in the slice): only MSE and MAE are defined."""
    y, p = [0.0, 0.0, 0.0], [1.0, 0.5, 2.0]
    got = run_combiner(name, y, p)
    if name in ("mse", "mae"):
        assert got == pytest.approx(reference(name, y, p))
    else:
        assert math.isnan(got)
        assert math.isnan(reference(name, y, p))


@pytest.mark.parametrize("case", sorted(CASES))
def test_numpy_gini_matches_pairwise_reference(case):
    y, p = CASES[case]
    assert numpy_metrics.normalized_gini(y, p) == pytest.approx(gini_by_pairs(y, p))


def test_metrics_run_inside_a_beam_pipeline():
    y, p = CASES["zero_heavy"]
    sample, derived = tfma_metrics.NormalizedGini().computations()
    examples = [{"labels": np.array([a], np.float32), "predictions": np.array([b], np.float32),
                 "example_weights": np.array([1.0], np.float32)} for a, b in zip(y, p)]
    expected = reference("normalized_gini", np.float32(y), np.float32(p))

    def check(results):
        (slice_key, values), = results
        (key,) = derived.keys
        assert slice_key == ()
        assert values[key] == pytest.approx(expected, rel=1e-6)

    with beam.Pipeline() as pipeline:
        computed = (pipeline
                    | beam.Create(examples)
                    | beam.Map(metric_util.to_standard_metric_inputs)
                    | beam.Map(lambda inputs: ((), inputs))
                    | beam.CombinePerKey(sample.combiner)
                    | beam.Map(lambda item: (item[0], derived.result(item[1]))))
        beam_util.assert_that(computed, check)


def test_registered_for_metric_configs():
    for cls in tfma_metrics.CORE_TARGET_METRICS:
        assert metric_types.registered_metrics()[cls.__name__] is cls


def run_binary(metric, labels, predictions, weights=None, weighted=False, splits=2):
    """A binary-output metric's value through its histogram combiner, as TFMA drives it."""
    histogram, derived = metric().computations(example_weighted=weighted)
    (key,) = derived.keys
    return derived.result(combine(histogram.combiner, labels, predictions, weights, splits))[key]


def run_log_loss(labels, predictions, weights=None, weighted=False, splits=2):
    return run_binary(tfma_metrics.SafeLogLoss, labels, predictions, weights, weighted, splits)


def test_log_loss_by_hand_and_against_sklearn():
    # -(log 0.8 + log 0.5 + log 0.9) / 3 for labels 1, 0, 1 and p 0.8, 0.5, 0.9
    assert run_log_loss([1, 0, 1], [0.8, 0.5, 0.9]) == pytest.approx(
        -(math.log(0.8) + math.log(0.5) + math.log(0.9)) / 3, rel=1e-6)
    y = (RNG.random(50) < 0.3).astype(float)
    p = RNG.uniform(0.01, 0.99, 50).astype(np.float32)
    assert run_log_loss(y, p) == pytest.approx(sk.log_loss(y, p), rel=1e-5)


def test_log_loss_of_saturated_probabilities_is_finite():
    """p exactly 1 on a positive and exactly 0 on a negative: nearly no loss, never NaN;
    a confident mistake costs -log(1e-7)."""
    assert run_log_loss([1, 0], [1.0, 0.0]) == pytest.approx(-math.log1p(-1e-7), abs=1e-9)
    assert run_log_loss([0, 1], [1.0, 0.0]) == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_log_loss_weights_select_rows():
    got = run_log_loss([1, 0, 1], [0.8, 0.5, 0.9], weights=[1, 0, 1], weighted=True)
    assert got == pytest.approx(-(math.log(0.8) + math.log(0.9)) / 2, rel=1e-6)
    assert math.isnan(run_log_loss([1, 0], [0.8, 0.5], weights=[0, 0], weighted=True))


def _fixed_run_examples(path, rows=3000):
    """tf.Examples carrying labels, predictions, weights and a slice feature; predictions
    include exact 0 and 1 and values on histogram bucket edges."""
    import tensorflow as tf

    rng = np.random.default_rng(11)
    click = (rng.random(rows) < 0.3).astype(np.int64)
    conversion = click * (rng.random(rows) < 0.4)
    p_click = np.clip(0.3 + 0.3 * (click - 0.3) + rng.normal(0, 0.2, rows), 0, 1)
    p_click[:6] = [0.0, 1.0, 0.5, 1e-4, 0.9999, 0.25]
    p_conversion = np.clip(rng.beta(2, 3, rows) + 0.2 * conversion, 0, 1)
    revenue = conversion * rng.lognormal(3, 1, rows)
    predicted_revenue = np.clip(revenue * rng.uniform(0.3, 1.6, rows) + rng.normal(2, 1, rows), 0,
                                None)
    device = rng.choice([b"ios", b"android", b"web"], rows)
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(rows):
            floats = {"p_click": p_click[i], "p_conversion": p_conversion[i],
                      "revenue": revenue[i], "p_revenue": predicted_revenue[i]}
            feature = {k: tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
                       for k, v in floats.items()}
            feature.update({k: tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
                            for k, v in (("click", click[i]), ("conversion", conversion[i]))})
            feature["device"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[device[i]]))
            writer.write(tf.train.Example(
                features=tf.train.Features(feature=feature)).SerializeToString())


def _run_tfma(path, output_dir, metrics_by_output):
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.proto import config_pb2

    outputs = {"click_prob": ("click", "p_click", None),
               "conversion_prob_given_click": ("conversion", "p_conversion", "click"),
               "revenue_pred": ("revenue", "p_revenue", None),
               "revenue_pred_given_conversion": ("revenue", "p_revenue", "conversion")}
    model = config_pb2.ModelSpec(
        label_keys={o: v[0] for o, v in outputs.items()},
        prediction_keys={o: v[1] for o, v in outputs.items()},
        example_weight_keys={o: v[2] for o, v in outputs.items() if v[2]})
    specs = []
    for output, (_, _, weight) in outputs.items():
        kind = "binary" if output.endswith(("prob", "click")) else "regression"
        specs.append(config_pb2.MetricsSpec(
            output_names=[output], metrics=metrics_by_output[kind],
            example_weights=config_pb2.ExampleWeightOptions(weighted=bool(weight),
                                                            unweighted=not weight)))
    config = config_pb2.EvalConfig(
        model_specs=[model], metrics_specs=specs,
        slicing_specs=[config_pb2.SlicingSpec(), config_pb2.SlicingSpec(feature_keys=["device"])])
    tfma.run_model_analysis(eval_config=config, data_location=path, file_format="tfrecords",
                            output_path=output_dir)
    metrics = {}
    for per_slice in tfma.load_metrics(output_dir):
        for entry in per_slice.metric_keys_and_values:
            metrics[(str(per_slice.slice_key), entry.key.output_name, entry.key.name)] = \
                entry.value.double_value.value
    plots = {}
    for per_slice in tfma.load_plots(output_dir):
        for entry in per_slice.plot_keys_and_values:
            buckets = entry.value.calibration_histogram_buckets.buckets
            plots[(str(per_slice.slice_key), entry.key.output_name)] = [
                (b.lower_threshold_inclusive, b.num_weighted_examples.value,
                 b.total_weighted_label.value, b.total_weighted_refined_prediction.value)
                for b in buckets]
    return metrics, plots


@pytest.mark.e2e
def test_project_metrics_equal_tfma_builtins_on_a_fixed_run(tmp_path):
    """The Evaluator's metrics (one combiner per output) give TFMA's built-in values:
    the same run evaluated with TFMA's ExampleCount, AUC, Calibration, MeanLabel,
    MeanPrediction and CalibrationPlot, and with the project's replacements."""
    from tensorflow_model_analysis.proto import config_pb2

    from tfx_pipeline import eval_config

    path = str(tmp_path / "run.tfrecord")
    _fixed_run_examples(path)
    builtin = {"binary": [config_pb2.MetricConfig(class_name=name) for name in
                          ("ExampleCount", "AUC", "Calibration", "MeanLabel", "MeanPrediction")]
               + [config_pb2.MetricConfig(class_name="CalibrationPlot",
                                          config='"num_buckets": 1000')],
               "regression": [config_pb2.MetricConfig(class_name=name) for name in
                              ("ExampleCount", "MeanLabel", "MeanPrediction")]}
    module = eval_config.CUSTOM_METRICS_MODULE
    ours = {kind: [config_pb2.MetricConfig(class_name=name, module=module) for name in names]
            for kind, names in (("binary", eval_config.BINARY_METRICS),
                                ("regression", eval_config.REGRESSION_METRICS))}
    expected_metrics, expected_plots = _run_tfma(path, str(tmp_path / "builtin"), builtin)
    got_metrics, got_plots = _run_tfma(path, str(tmp_path / "ours"), ours)
    assert len(expected_metrics) == 4 * 4 * 5 - 4 * 2 * 2   # 4 slices; 5 binary, 3 regression
    for key, value in expected_metrics.items():
        assert got_metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert expected_plots.keys() == got_plots.keys() and len(got_plots) == 8
    for key, buckets in expected_plots.items():
        assert len(got_plots[key]) == len(buckets) == 1002
        np.testing.assert_allclose(np.array(got_plots[key]), np.array(buckets), rtol=1e-9,
                                   atol=1e-12, err_msg=str(key))


def test_sample_packs_float32_values_and_widens_for_any_other_value():
    """Pairs are kept exactly: float32 storage while every value is a float32, float64
    from the first that is not, across merges too."""
    from tfx_pipeline.tfma_metrics import _Sample

    narrow = _Sample()
    for label, prediction in ((1.5, 0.25), (float(np.float32(0.1)), float(np.float32(3.3)))):
        narrow.add(label, prediction)
    assert narrow.labels.typecode == "f"
    np.testing.assert_array_equal(narrow.values()[1], [0.25, np.float32(3.3)])

    wide = _Sample()
    wide.add(2.0**24 + 1, 0.5)          # an int64 label float32 cannot hold
    wide.add(0.1, float("nan"))
    assert wide.labels.typecode == "d"
    narrow.extend(wide)
    labels, predictions = narrow.values()
    np.testing.assert_array_equal(labels, [1.5, np.float32(0.1), 2.0**24 + 1, 0.1])
    assert np.isnan(predictions[-1]) and predictions[2] == 0.5 and labels.dtype == np.float64

    overflow = _Sample()
    overflow.add(1e39, 1.0)             # inf in float32
    assert overflow.values()[0][0] == 1e39
