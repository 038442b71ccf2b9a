"""Mean recalibration: hand-worked shifts and scales, and models that apply them."""

import math
import os

import numpy as np
import pytest
from scipy.stats import spearmanr

from funnel_data import random_batch
from keras_models import registry
from keras_models.layout import InputLayout, TaskLayout
from keras_models.recalibration import fit_recalibration, shift_probability

INPUTS = InputLayout({"a": 5, "b": 7}, ("x",))


def test_shift_probability_by_hand():
    # logit(0.2) = ln(1/4); adding ln 2 gives odds 1/2, so p = 1/3.
    assert shift_probability(0.2, 2.0) == pytest.approx(1 / 3, rel=1e-12)
    assert shift_probability(0.2, 0.5) == pytest.approx(1 / 9, rel=1e-12)  # odds 1/8
    p = np.array([0.0, 1e-6, 0.3, 1.0])
    np.testing.assert_array_equal(shift_probability(p, 1.0), p)
    assert shift_probability(0.0, 7.0) == 0.0 and shift_probability(1.0, 7.0) == 1.0


def test_chained_shifts_and_core_scale_by_hand():
    """Nine rows, every conditional the same: step 1 at 0.2 with 3 of 9 labels ->
    shift ln 2 (c1 = 1/3); step 2 at 0.5 with 1 of 9 -> c2 = 1/3 given c1 = 1/3, a
    shift of ln(1/2); E[y] = 30 * m2 = 30/9 per row, 12 observed in all -> scale 0.4."""
    y1 = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0], float)
    y2 = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0], float)
    values = fit_recalibration([np.full(9, 0.2), np.full(9, 0.5)], [y1, y2], chained=True,
                               core_mean=lambda last: 30.0 * last,
                               core_labels=np.array([12.0] + [0.0] * 8))
    assert values.shifts == pytest.approx([math.log(2), math.log(0.5)], abs=1e-9)
    assert values.core_scale == pytest.approx(0.4, rel=1e-9)


def test_marginal_shifts_by_hand():
    """Marginals shift on their own: 0.2 -> 1/3 is ln 2, 0.1 -> 1/9 is ln(9/8)
    (odds 1/9 -> 1/8); no core mean leaves the scale at 1."""
    y1 = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0], float)
    y2 = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0], float)
    values = fit_recalibration([np.full(9, 0.2), np.full(9, 0.1)], [y1, y2], chained=False)
    assert values.shifts == pytest.approx([math.log(2), math.log(9 / 8)], abs=1e-9)
    assert values.core_scale == 1.0


def test_mixed_probabilities_reach_the_label_mean_and_keep_their_order():
    rng = np.random.default_rng(3)
    probs = rng.beta(0.5, 8, 5000)
    labels = (rng.random(5000) < 1.4 * probs).astype(float)   # the model under-predicts
    (shift,) = fit_recalibration([probs], [labels], chained=False).shifts
    shifted = shift_probability(probs, math.exp(shift))
    assert shift > 0
    assert shifted.mean() == pytest.approx(labels.mean(), rel=1e-9)
    assert spearmanr(probs, shifted).statistic == pytest.approx(1.0)


def test_a_step_that_never_happened_goes_to_the_bound():
    (shift,) = fit_recalibration([np.full(4, 0.3)], [np.zeros(4)], chained=False).shifts
    assert shift == pytest.approx(-20.0, abs=1e-6)


@pytest.mark.parametrize("name,core_head", [("shared_bottom", "decomposition"),
                                            ("esmm", "decomposition"), ("htlnet", "ziln"),
                                            ("apem", "decomposition"), ("mmoe", "regression")])
def test_models_predict_the_label_means_after_recalibrating(name, core_head, tmp_path):
    """Fitted on rows, the model's own outputs on those rows average to the labels
    (up to the 1e-6 squash of probabilities), each step ranks its rows as before,
    and a saved model keeps the fitted values."""
    import keras

    tasks = TaskLayout(("click", "buy"), "amount", core_head=core_head)
    model = registry.build(name, INPUTS, tasks, {"embedding_dim": 4})
    features, labels = random_batch(INPUTS, 400, seed=1)
    model.adapt_to_labels(labels)
    before = model(features)
    values = model.recalibrate(features, labels)
    after = model(features)
    for step in ("click", "buy"):
        assert float(np.mean(after[f"{step}_prob"])) == pytest.approx(
            float(labels[step].mean()), abs=2e-6)
    assert spearmanr(before["click_prob"], after["click_prob"]).statistic == pytest.approx(1.0)
    if core_head == "regression":
        assert values.core_scale == 1.0
        np.testing.assert_allclose(after["amount_pred"], before["amount_pred"], rtol=1e-6)
    else:
        assert float(np.sum(after["amount_pred"])) == pytest.approx(
            float(labels["amount"].sum()), rel=1e-4)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(features)["amount_pred"], after["amount_pred"], rtol=1e-5)


def test_recalibrate_off_leaves_the_outputs_alone():
    tasks = TaskLayout(("click", "buy"), "amount")
    model = registry.build("shared_bottom", INPUTS, tasks, {"embedding_dim": 4,
                                                            "recalibrate": False})
    features, labels = random_batch(INPUTS, 100)
    before = model(features)
    assert model.recalibrate(features, labels) is None
    np.testing.assert_array_equal(model(features)["buy_prob"], before["buy_prob"])
