"""HTLNet: stop-gradient placement, the Label Embedding Unit's Gumbel-softmax, the tau schedule."""

import numpy as np
import pytest
import tensorflow as tf

from funnel_data import random_batch
from keras_models import registry
from keras_models.htlnet import LabelEmbeddingUnit, TemperatureSchedule
from keras_models.layout import InputLayout, TaskLayout

INPUTS = InputLayout({"a": 20, "b": 10}, ("x",))
TASKS = TaskLayout(("click", "buy"), "amount")


def batch(n=64, seed=0):
    return random_batch(INPUTS, n, seed)


def gradient_norms(model, loss_name, variables):
    features, labels = batch()
    with tf.GradientTape() as tape:
        losses = model.task_losses(labels, model(features, training=True))
    grads = tape.gradient(losses[loss_name], variables)
    return [0.0 if g is None else float(tf.norm(tf.convert_to_tensor(g))) for g in grads]


def variables_of(*layers):
    return [v for layer in layers for v in layer.trainable_variables]


@pytest.fixture(scope="module")
def model():
    m = registry.build("htlnet", INPUTS, TASKS, {"embedding_dim": 4, "tower_units": [16, 8]})
    m.adapt_target(batch()[1]["amount"])
    return m


def test_later_losses_do_not_reach_earlier_towers_and_heads(model):
    click_path = variables_of(model.representation_layers[0], model.towers[0], model.heads[0])
    buy_path = variables_of(model.representation_layers[1], model.towers[1], model.heads[1])
    for loss_name, earlier in (("buy", click_path), ("amount", click_path + buy_path)):
        norms = gradient_norms(model, loss_name, earlier)
        assert norms and all(n == 0.0 for n in norms), loss_name


def test_later_losses_train_the_label_tables_and_fusion_units_they_consume(model):
    # With one earlier task the IFU's softmax weight is identically 1, so only its value
    # projection is used.
    consumed = {
        "buy": [model.label_units[0].table] + variables_of(model.representation_fusion[0].value,
                                                           model.label_fusion[0].value),
        "amount": [model.label_units[0].table, model.label_units[1].table]
                  + variables_of(model.representation_fusion[1], model.label_fusion[1]),
    }
    for loss_name, variables in consumed.items():
        norms = gradient_norms(model, loss_name, variables)
        assert all(n > 0.0 for n in norms), (loss_name, norms)
    # The shared embedding is the one path every loss reaches.
    for loss_name in ("click", "buy", "amount"):
        assert all(n > 0 for n in gradient_norms(model, loss_name, model.shared_variables))


def test_label_embedding_is_deterministic_at_inference_and_matches_the_closed_form():
    unit = LabelEmbeddingUnit(3, seed=5)
    p = tf.constant([0.1, 0.5, 0.9])
    tau = 2.0
    first, second = unit(p, tau=tau, training=False).numpy(), unit(p, tau=tau, training=False).numpy()
    np.testing.assert_array_equal(first, second)
    logits = np.log(np.stack([p, 1 - p], -1)) / tau          # softmax(log [p, 1-p] / tau)
    soft = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(first, soft @ unit.table.numpy(), rtol=1e-5)


def test_label_embedding_is_noisy_in_training_and_reproducible_with_a_seed():
    p = tf.fill([4000], 0.3)
    unit = LabelEmbeddingUnit(2, seed=7)
    a, b = unit(p, tau=1.0, training=True).numpy(), unit(p, tau=1.0, training=True).numpy()
    assert not np.allclose(a, b)                    # fresh noise every call
    assert np.std(a[:, 0]) > 1e-3                   # rows differ although p is constant
    again = LabelEmbeddingUnit(2, seed=7)
    again.table.assign(unit.table)
    np.testing.assert_allclose(again(p, tau=1.0, training=True).numpy(), a, rtol=1e-6)
    # As tau -> 0 the sample becomes a hard Bernoulli(p) draw: mean p (binomial sd 0.007 here).
    cold = unit(p, tau=0.02, training=True).numpy()
    table = unit.table.numpy()
    s1 = (cold[:, 0] - table[1, 0]) / (table[0, 0] - table[1, 0])
    assert abs(s1.mean() - 0.3) < 0.025
    assert np.mean((s1 > 0.01) & (s1 < 0.99)) < 0.05  # nearly all draws are (almost) hard


def test_temperature_schedule():
    variable = tf.Variable(0.0)
    schedule = TemperatureSchedule(variable, start=10.0, decay=0.9, decay_steps=5000, minimum=0.5)
    assert schedule.value_at(0) == 10.0
    assert schedule.value_at(4999) == 10.0
    assert schedule.value_at(5000) == pytest.approx(9.0)
    assert schedule.value_at(10**7) == 0.5


def test_temperature_is_annealed_during_fit():
    m = registry.build("htlnet", INPUTS, TASKS, {"embedding_dim": 4, "tower_units": [8],
                                                 "tau_decay_steps": 2, "tau_decay": 0.5})
    features, labels = batch(64)
    m.adapt_target(labels["amount"])
    data = tf.data.Dataset.from_tensor_slices((features, labels)).batch(16)
    m.fit(data, epochs=1, verbose=0, callbacks=m.training_callbacks())  # 4 steps
    assert float(m.temperature.numpy()) == pytest.approx(10.0 * 0.5 ** 2)


def test_needs_a_continuous_core_target():
    with pytest.raises(ValueError, match="HTLNet needs a chain that ends in a continuous core target"):
        registry.build("htlnet", INPUTS, TaskLayout(("click", "buy")))
