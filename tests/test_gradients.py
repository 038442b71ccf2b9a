"""Gradient rules against NumPy references, on flattened vectors and on a real model."""

import numpy as np
import pytest
import tensorflow as tf

from funnel_data import random_batch
from keras_models import registry
from keras_models.gradients import (GradientConfig, flatten_task_gradients, htlnet_combine,
                                    metabalance_combine, pcgrad_combine)
from keras_models.layout import InputLayout, TaskLayout


def htlnet_reference(G, gamma=0.1, cap=10.0, alpha=1.0, timing="after_projection", clip="upper"):
    core = G[-1]
    out = core.copy()
    for g in G[:-1]:
        dot = g @ core
        projected = g - alpha * dot / (core @ core) * core if dot < 0 else g
        reference = projected if timing == "after_projection" else g
        w = np.linalg.norm(core) / np.linalg.norm(reference)
        w = min(w, cap) if clip == "upper" else np.clip(w, 1 / cap, cap)
        out = out + (1 - gamma + gamma * w) * projected
    return out


def test_no_projection_when_gradients_agree():
    G = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])  # dot = 3 > 0
    got = htlnet_combine(tf.constant(G), GradientConfig(rule="htlnet", gamma=0.5)).numpy()
    w = np.linalg.norm(G[1]) / np.linalg.norm(G[0])
    np.testing.assert_allclose(got, G[1] + (0.5 + 0.5 * w) * G[0], rtol=1e-6)


def test_projection_exactly_when_dot_product_is_negative():
    core = np.array([1.0, 0.0, 0.0])
    conflicting = np.array([-2.0, 1.0, 0.0])     # dot = -2: projected to [0, 1, 0]
    orthogonal = np.array([0.0, 3.0, 0.0])       # dot = 0: unchanged
    G = np.stack([conflicting, orthogonal, core])
    got = htlnet_combine(tf.constant(G), GradientConfig(rule="htlnet", gamma=0.0)).numpy()
    # gamma = 0 keeps norms, so the result is core + projected + orthogonal.
    np.testing.assert_allclose(got, core + np.array([0.0, 1.0, 0.0]) + orthogonal, atol=1e-7)


@pytest.mark.parametrize("options", [
    dict(),
    dict(gamma=1.0, cap=2.0),
    dict(alpha=0.5, timing="before_projection", clip="two_sided", cap=3.0),
])
def test_htlnet_rule_matches_numpy_reference(options):
    rng = np.random.default_rng(0)
    G = rng.normal(size=(3, 40))
    G[0] *= 0.01  # a tiny classification gradient: its norm ratio hits the cap
    G[1] = -G[2] + 0.1 * rng.normal(size=40)  # conflicts with the core gradient
    config = GradientConfig(rule="htlnet", gamma=options.get("gamma", 0.1),
                            cap=options.get("cap", 10.0),
                            projection_strength=options.get("alpha", 1.0),
                            norm_timing=options.get("timing", "after_projection"),
                            ratio_clip=options.get("clip", "upper"))
    got = htlnet_combine(tf.constant(G), config).numpy()
    np.testing.assert_allclose(got, htlnet_reference(G, config.gamma, config.cap,
                                                     config.projection_strength,
                                                     config.norm_timing, config.ratio_clip),
                               rtol=1e-6)


def pcgrad_reference(G):
    """PCGrad in NumPy: each task's gradient projected off every conflicting one, in order."""
    expected = np.zeros(G.shape[1])
    for t in range(len(G)):
        g = G[t].copy()
        for j in range(len(G)):
            if j != t and g @ G[j] < 0:
                g = g - (g @ G[j]) / (G[j] @ G[j]) * G[j]
        expected += g
    return expected


def test_pcgrad_matches_numpy_reference():
    rng = np.random.default_rng(1)
    G = rng.normal(size=(3, 10))
    np.testing.assert_allclose(pcgrad_combine(tf.constant(G)).numpy(), pcgrad_reference(G),
                               rtol=1e-6)


def test_sparse_gradients_combine_on_touched_rows_only():
    table = tf.Variable(tf.zeros([1000, 2]))
    a = tf.IndexedSlices(tf.constant([[1.0, 0.0], [2.0, 0.0], [5.0, 5.0]]), tf.constant([7, 3, 7]))
    b = tf.IndexedSlices(tf.constant([[0.0, 1.0]]), tf.constant([9]))
    G, rebuild = flatten_task_gradients([[a], [b]], [table])
    assert G.shape == (2, 6)  # 3 touched rows x 2 dims, never the 1000-row table
    summed = rebuild(tf.reduce_sum(G, axis=0))[0]
    assert isinstance(summed, tf.IndexedSlices)
    dense = tf.convert_to_tensor(summed).numpy()
    expected = np.zeros([1000, 2])
    expected[7] = [6.0, 5.0]
    expected[3] = [2.0, 0.0]
    expected[9] = [0.0, 1.0]
    np.testing.assert_allclose(dense, expected)


INPUTS = InputLayout({"a": 50, "b": 30}, ("x",))
TASKS = TaskLayout(("click", "buy"), "amount")


def model_and_batch(rule):
    import keras

    keras.utils.set_random_seed(0)
    model = registry.build("shared_bottom", INPUTS, TASKS,
                           {"embedding_dim": 4, "gradient_rule": rule, "gradient_gamma": 0.3})
    features, labels = random_batch(INPUTS, 32, seed=2)
    model.adapt_target(labels["amount"])
    return model, features, labels


def dense(gradient):
    return tf.convert_to_tensor(gradient).numpy().reshape(-1)


def taped_step(model, features, labels):
    """The forward half of the model's train_step under a persistent tape:
    (tape, embedded fields, losses incl. regularisation, their sum)."""
    with tf.GradientTape(persistent=True) as tape:
        fields = model.embedding(features)
        outputs = model._outputs(model.compute_heads(fields, training=True))
        losses = model.training_losses(labels, outputs)
        total = sum(losses.values())
    return tape, fields, losses, total


def test_model_level_htlnet_rule():
    model, features, labels = model_and_batch("htlnet")
    tape, fields, losses, total = taped_step(model, features, labels)
    got = model.compute_gradients(tape, fields, losses, total)
    shared = list(model.shared_variables)
    plain = tape.gradient(total, model.trainable_variables)
    shared_ids = {id(v) for v in shared}
    per_task = [np.concatenate([dense(g) for g in tape.gradient(losses[t], shared)])
                for t in TASKS.label_names]
    expected_shared = htlnet_reference(np.stack(per_task), gamma=0.3)
    got_shared = np.concatenate([dense(g) for v, g in zip(model.trainable_variables, got)
                                 if id(v) in shared_ids])
    np.testing.assert_allclose(got_shared, expected_shared, rtol=1e-4, atol=1e-9)
    for variable, g, p in zip(model.trainable_variables, got, plain):
        if id(variable) not in shared_ids:  # task-specific: the plain summed-loss gradient
            # (summed over per-task passes here, so equal up to float32 summation order)
            np.testing.assert_allclose(dense(g), dense(p), rtol=1e-5, atol=1e-8)
    # The rule differs from plain summation here (otherwise this test proves nothing).
    plain_shared = np.concatenate([dense(p) for v, p in zip(model.trainable_variables, plain)
                                   if id(v) in shared_ids])
    assert np.abs(got_shared - plain_shared).max() > 1e-6


@pytest.mark.parametrize("rule", ["none", "htlnet", "pcgrad", "metabalance"])
def test_every_rule_trains(rule):
    model, features, labels = model_and_batch(rule)
    data = tf.data.Dataset.from_tensor_slices((features, labels)).batch(16).repeat()
    history = model.fit(data, steps_per_epoch=10, epochs=3, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert history["loss"][-1] < history["loss"][0]


def test_unknown_rule_is_rejected():
    with pytest.raises(ValueError, match="gradient_rule must be one of"):
        registry.build("shared_bottom", INPUTS, TASKS, {"gradient_rule": "magic"})


def test_regularisation_reaches_the_shared_variables_under_a_rule():
    """An L2 weight regulariser on the embedding table adds its plain gradient, 2 * l2 * W on
    every row, to the rule's combination of task gradients."""
    import keras

    features, labels = random_batch(INPUTS, 32, seed=2)
    table_gradients = {}
    for l2 in (0.0, 0.25):
        keras.utils.set_random_seed(0)
        model = registry.build("shared_bottom", INPUTS, TASKS,
                               {"embedding_dim": 4, "gradient_rule": "htlnet"})
        if l2:
            model.embedding.table.regularizer = keras.regularizers.L2(l2)
        model.adapt_target(labels["amount"])
        tape, fields, losses, total = taped_step(model, features, labels)
        assert ("regularization" in losses) == bool(l2)
        grads = model.compute_gradients(tape, fields, losses, total)
        index = [id(v) for v in model.trainable_variables].index(id(model.embedding.table))
        table_gradients[l2] = dense(grads[index])
        table = model.embedding.table.numpy().reshape(-1)
    np.testing.assert_allclose(table_gradients[0.25] - table_gradients[0.0], 2 * 0.25 * table,
                               rtol=1e-4, atol=1e-7)


def metabalance_reference(gradients, decay, gamma):
    """MetaBalance over a sequence of G (T, N) in NumPy: moving-average norms (the first
    step takes the norms as they are), auxiliary gradients rescaled toward the target's."""
    ema, results = None, []
    for G in gradients:
        norms = np.linalg.norm(G, axis=1)
        ema = norms if ema is None else decay * ema + (1 - decay) * norms
        scale = 1 - gamma + gamma * ema[-1] / ema[:-1]
        results.append(G[-1] + (scale[:, None] * G[:-1]).sum(axis=0))
    return results, ema


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9])
def test_metabalance_matches_numpy_over_several_steps(decay):
    rng = np.random.default_rng(5)
    sequence = [rng.normal(size=(3, 20)) * np.array([[0.01], [1.0], [5.0]]) for _ in range(4)]
    config = GradientConfig(rule="metabalance", gamma=0.7, ema_decay=decay)
    ema = tf.Variable(tf.zeros(3, tf.float64))
    got = [metabalance_combine(tf.constant(G), ema, config).numpy() for G in sequence]
    expected, expected_ema = metabalance_reference(sequence, decay, 0.7)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)   # the rule adds 1e-12 to norms
    np.testing.assert_allclose(ema.numpy(), expected_ema, rtol=1e-10)


def test_ema_decay_is_a_hyper_parameter():
    model = registry.build("shared_bottom", INPUTS, TASKS,
                           {"gradient_rule": "metabalance", "ema_decay": 0.25})
    assert model.gradient_handler.config.ema_decay == 0.25
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        registry.build("shared_bottom", INPUTS, TASKS,
                       {"gradient_rule": "metabalance", "ema_decay": 1.0})


@pytest.mark.parametrize("rule,scope", [("htlnet", "embeddings"), ("pcgrad", "shared"),
                                        ("metabalance", "shared"), ("none", "embeddings")])
def test_auto_scope_follows_the_papers(rule, scope):
    model = registry.build("shared_bottom", INPUTS, TASKS, {"gradient_rule": rule})
    assert model.gradient_scope == scope


def test_shared_scope_covers_every_variable_two_tasks_reach():
    model = registry.build("shared_bottom", INPUTS, TASKS,
                           {"embedding_dim": 4, "gradient_rule": "pcgrad", "gradient_scope": "shared"})
    features, labels = random_batch(INPUTS, 16)
    model.adapt_target(labels["amount"], labels["buy"])
    names = {v.path for v in model.shared_scope_variables((features, labels))}
    expected = {v.path for v in model.embedding.trainable_variables}
    expected |= {v.path for v in model.bottom.trainable_variables}
    assert names == expected
    assert not any("tower" in n or "head" in n for n in names)


def test_shared_scope_applies_pcgrad_to_the_bottom_too():
    """PCGrad on the concatenation of every shared variable's per-task gradient."""
    model = registry.build("shared_bottom", INPUTS, TASKS,
                           {"embedding_dim": 4, "gradient_rule": "pcgrad", "gradient_scope": "shared"})
    features, labels = random_batch(INPUTS, 32, seed=4)
    model.adapt_target(labels["amount"], labels["buy"])
    tape, fields, losses, total = taped_step(model, features, labels)
    got = model.compute_gradients(tape, fields, losses, total)
    shared = [v for v in model.trainable_variables
              if any(v is s for s in model.shared_scope_variables((features, labels)))]
    per_task = np.stack([np.concatenate([dense(g) for g in tape.gradient(losses[t], shared)])
                         for t in TASKS.label_names])
    expected = pcgrad_reference(per_task)
    by_id = {id(v): g for v, g in zip(model.trainable_variables, got)}
    np.testing.assert_allclose(np.concatenate([dense(by_id[id(v)]) for v in shared]), expected,
                               rtol=1e-4, atol=1e-8)
    plain = np.concatenate([dense(g) for g in tape.gradient(total, shared)])
    assert np.abs(expected - plain).max() > 1e-6   # the rule changed something
