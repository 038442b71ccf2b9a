"""Core heads: their means and losses against hand-computed values and NumPy/SciPy,
and the unbiasedness each head is chosen for."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from funnel_data import random_batch
from keras_models import registry
from keras_models.core_heads import DecompositionHead, RegressionHead, ZILNHead
from keras_models.layout import InputLayout, TaskLayout

INPUTS = InputLayout({"a": 5, "b": 7}, ("x",))


def test_decomposition_mean_and_loss_by_hand():
    head = DecompositionHead()
    y = np.array([0.0, 10.0, 30.0, 0.0], "float32")
    converted = np.array([0.0, 1.0, 1.0, 1.0], "float32")
    head.adapt(y, converted)                 # converted rows' values 10, 30, 0: mean 40/3
    mean, std = 40 / 3, np.std([10.0, 30.0, 0.0])
    assert float(head.value_mean) == pytest.approx(mean)
    assert float(head.value_std) == pytest.approx(std, rel=1e-6)
    raw = np.array([[0.0], [1.0], [-1.0], [-10.0]], "float32")
    p = np.array([0.5, 0.2, 0.1, 0.9], "float32")
    # value = max(mean + std * z, 0); prediction P * value
    expected = p * np.maximum(mean + std * raw[:, 0], 0)
    np.testing.assert_allclose(head.mean(raw, p), expected, rtol=1e-6)
    # Squared error of z against (y - mean) / std on the three converted rows only.
    z = (y - mean) / std
    expected_loss = np.sum(converted * (raw[:, 0] - z) ** 2) / 3
    assert float(head.loss(raw, y, converted)) == pytest.approx(expected_loss, rel=1e-6)


def test_ziln_mean_by_hand():
    head = ZILNHead()
    head.adapt(np.array([0.0, 2.0, 6.0]))      # mean positive value 4
    assert float(head.scale) == 4.0
    sigma_raw = math.log(math.e - 1)          # softplus(sigma_raw) = 1
    raw = np.array([[0.0, 0.0, sigma_raw], [math.log(3), 1.0, sigma_raw]], "float32")
    sigma = 1 + 1e-3
    expected = [0.5 * 4 * math.exp(0.5 * sigma ** 2), 0.75 * 4 * math.exp(1 + 0.5 * sigma ** 2)]
    np.testing.assert_allclose(head.mean(raw, None), expected, rtol=1e-5)


def test_ziln_loss_against_scipy():
    head = ZILNHead()
    rng = np.random.default_rng(0)
    y = np.where(rng.random(50) < 0.3, rng.lognormal(1, 0.7, 50), 0).astype("float32")
    head.adapt(y)
    raw = rng.normal(size=(50, 3)).astype("float32")
    q = 1 / (1 + np.exp(-raw[:, 0]))
    sigma = np.log1p(np.exp(raw[:, 2])) + 1e-3
    positive = y > 0
    scale = float(head.scale)
    nll = -stats.lognorm.logpdf(np.where(positive, y, 1) / scale, s=sigma, scale=np.exp(raw[:, 1]))
    expected = (np.mean(-(positive * np.log(q) + (1 - positive) * np.log(1 - q)))
                + np.mean(positive * nll))
    assert float(head.loss(raw, y, None)) == pytest.approx(expected, rel=1e-5)


def test_ziln_maximum_likelihood_recovers_the_sample_mean():
    """With one parameter vector for every row, the loss is minimal at q = share of
    positives, mu and sigma = mean and std of log(y / scale); the mean there is the
    log-normal mean, and the gradient of the loss vanishes."""
    rng = np.random.default_rng(1)
    y = np.where(rng.random(20000) < 0.05, rng.lognormal(3, 2.0, 20000), 0).astype("float32")
    head = ZILNHead()
    head.adapt(y)
    logs = np.log(y[y > 0] / float(head.scale))
    share = (y > 0).mean()
    sigma = logs.std()
    optimum = np.array([math.log(share / (1 - share)), logs.mean(),
                        math.log(math.expm1(sigma - 1e-3))], "float32")
    variable = tf.Variable(np.tile(optimum, (len(y), 1)))
    with tf.GradientTape() as tape:
        loss = head.loss(variable, y, None)
    gradient = tape.gradient(loss, variable).numpy().sum(axis=0)
    np.testing.assert_allclose(gradient, 0, atol=1e-3)
    predicted = float(np.mean(head.mean(variable, None)))
    lognormal_mean = share * float(head.scale) * math.exp(logs.mean() + sigma ** 2 / 2)
    assert predicted == pytest.approx(lognormal_mean, rel=1e-4)


def test_regression_head_inverts_its_scaler():
    head = RegressionHead("log1p_z_score")
    y = np.array([0.0, 1.0, 10.0, 100.0], "float32")
    head.adapt(y)
    z = np.asarray(head.scaler(y))[:, None]
    np.testing.assert_allclose(head.mean(z, None), y, rtol=1e-4, atol=1e-4)
    assert float(head.loss(z, y, None)) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("core_head", ["decomposition", "ziln", "regression"])
def test_models_serve_the_core_heads_mean(core_head):
    tasks = TaskLayout(("click", "buy"), "amount", core_head=core_head)
    model = registry.build("shared_bottom", INPUTS, tasks, {"embedding_dim": 4})
    features, labels = random_batch(INPUTS, 64)
    model.adapt_target(labels["amount"], labels["buy"])
    outputs = model(features)
    raw = outputs["amount_raw"]
    assert raw.shape == (64, model.core_head.units)
    expected = model.core_head.mean(raw, outputs["buy_prob"])
    np.testing.assert_allclose(outputs["amount_pred"], expected, rtol=1e-6)
    np.testing.assert_array_equal(outputs["score"], outputs["amount_pred"])
    losses = model.task_losses(labels, outputs)
    condition = labels["buy"]
    assert float(losses["amount"]) == pytest.approx(
        float(model.core_head.loss(raw, labels["amount"], condition)), rel=1e-6)


def test_probabilities_never_reach_zero_or_one():
    """Saturated logits: the contract's probabilities stay strictly inside (0, 1)."""
    tasks = TaskLayout(("click", "buy"), "amount")
    for name in ("shared_bottom", "esmm"):
        model = registry.build(name, INPUTS, tasks, {"embedding_dim": 4})
        for head in model.heads[:2]:
            head.bias.assign(np.full(head.bias.shape, 200.0, "float32"))
        ones = model(random_batch(INPUTS, 8)[0])
        for head in model.heads[:2]:
            head.bias.assign(np.full(head.bias.shape, -200.0, "float32"))
        zeros = model(random_batch(INPUTS, 8)[0])
        for step in ("click", "buy"):
            assert np.all(np.asarray(ones[f"{step}_prob"]) < 1.0), name
            assert np.all(np.asarray(zeros[f"{step}_prob"]) > 0.0), name


def test_ziln_initial_bias_is_the_training_prior():
    """With the tower's kernel at zero the ZILN parts equal the training prior: the
    positive share, and the mean and std of log(y / scale) over the positive rows."""
    head = ZILNHead()
    y = np.array([0.0, 0.0, 0.0, 1.0, 3.0, 9.0], "float32")   # half positive, scale 13/3
    head.adapt(y)
    raw = np.asarray(head.initial_bias(y, None), "float32")[None, :]
    logit, mu, sigma = (np.asarray(part)[0] for part in ZILNHead._parts(raw))
    log_y = np.log(np.array([1.0, 3.0, 9.0]) / (13 / 3))
    assert 1 / (1 + math.exp(-logit)) == pytest.approx(0.5, abs=1e-6)
    assert mu == pytest.approx(log_y.mean(), rel=1e-5)
    assert sigma == pytest.approx(log_y.std(), rel=1e-5)
    assert head.initial_bias(np.zeros(3), None) is None
    assert DecompositionHead().initial_bias(y, y > 0) is None
