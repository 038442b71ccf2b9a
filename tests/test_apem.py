"""APEM: shapes, SE gates, selector weights, field groups and the three objectives."""

import numpy as np
import pytest

from funnel_data import random_batch
from keras_models import registry
from keras_models.apem import resolve_groups
from keras_models.layout import InputLayout, TaskLayout

INPUTS = InputLayout({"a": 20, "b": 10, "c": 5}, ("x", "y"))
TASKS = TaskLayout(("click", "buy"), "amount")
B, F, D = 32, 5, 8


def batch(seed=0):
    return random_batch(INPUTS, B, seed)


def build(**hparams):
    return registry.build("apem", INPUTS, TASKS, {"embedding_dim": D, **hparams})


def test_shapes_gates_and_selector_weights():
    model = build(num_layers=2)
    features, _ = batch()
    patterns, gates = model.patterns(features)
    assert patterns.shape == (B, F, D) and gates.shape == (B, F)
    assert np.all((gates.numpy() > 0) & (gates.numpy() < 1))
    weights, _ = model.selector.weights_and_values(patterns)
    assert weights.shape == (B, 3, 2, F)                          # tasks x heads x fields
    np.testing.assert_allclose(weights.numpy().sum(-1), 1.0, rtol=1e-5)
    selections = model.selector(patterns)
    assert [s.shape for s in selections] == [(B, D + F * D)] * 3  # selection + flattened P


def test_marginals_are_products_of_conditionals():
    model = build()
    out = model(batch()[0])
    product = out["click_conditional"].numpy() * out["buy_conditional"].numpy()
    # The contract's marginals are squashed into [eps, 1 - eps] (keras_models.base.safe_probability).
    np.testing.assert_allclose(out["buy_prob"], 1e-6 + (1 - 2e-6) * product, rtol=1e-6)
    assert np.all(out["buy_prob"].numpy() <= out["click_prob"].numpy())


def test_gate_selector_and_switches():
    model = build(selector="gate", adaptive_indicators=False, selector_skip=False, layer_norm=False,
                  share_inducing_points=True, cross_group=True)
    patterns, _ = model.patterns(batch()[0])
    weights, _ = model.selector.weights_and_values(patterns)
    assert weights.shape == (B, 3, F)
    assert np.all((weights.numpy() > 0) & (weights.numpy() < 1))
    assert [s.shape for s in model.selector(patterns)] == [(B, F * D)] * 3
    shared = [v for v in model.trainable_variables if "shared_inducing_points" in v.path]
    assert len(shared) == 1


def test_adaptive_indicators_depend_on_the_sample():
    model = build()
    patterns, _ = model.patterns(batch()[0])
    weights = model.selector.weights_and_values(patterns)[0].numpy()
    assert not np.allclose(weights[0], weights[1])


def test_field_groups():
    names = INPUTS.field_names
    assert resolve_groups(names, 2, ()) == [[0, 1, 2], [3, 4]]
    assert resolve_groups(names, 2, [["x", "a"], ["b", "c", "y"]]) == [[3, 0], [1, 2, 4]]
    with pytest.raises(ValueError, match=r"field_groups names unknown field\(s\) \['zip'\]"):
        resolve_groups(names, 2, [["zip"]])
    with pytest.raises(ValueError, match="must name every field exactly once"):
        resolve_groups(names, 2, [["a", "b"]])
    grouped = build(field_groups=[["x", "a"], ["b", "c", "y"]])
    assert grouped(batch()[0])["score"].shape == (B,)


def bce(y, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_masked_conditional_objective():
    model = build(objective="masked_conditional")
    features, labels = batch()
    out = model(features)
    losses = model.task_losses(labels, out)
    click = labels["click"]
    expected_buy = (click * bce(labels["buy"], out["buy_conditional"].numpy())).sum() / click.sum()
    np.testing.assert_allclose(float(losses["buy"]), expected_buy, rtol=1e-5)
    np.testing.assert_allclose(float(losses["click"]),
                               bce(click, out["click_conditional"].numpy()).mean(), rtol=1e-5)


def test_constrained_objective_predicts_marginals_and_penalises_inversions():
    model = build(objective="constrained", constraint_weight=0.5)
    features, labels = batch()
    out = model(features)
    assert "buy_conditional" not in out
    losses = model.task_losses(labels, out)
    excess = np.maximum(out["buy_prob"].numpy() - out["click_prob"].numpy(), 0)
    np.testing.assert_allclose(float(losses["constraint"]), 0.5 * excess.mean(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(float(losses["buy"]), bce(labels["buy"], out["buy_prob"].numpy()).mean(),
                               rtol=1e-5)


def test_unknown_objective_and_selector():
    with pytest.raises(ValueError, match="objective must be one of"):
        build(objective="magic")
    with pytest.raises(ValueError, match="selector must be one of"):
        build(selector="magic")


def test_pattern_selector_against_numpy():
    """Attention selection written out in NumPy from the layer's own weights."""
    model = build(adaptive_indicators=False, selector_skip=False)
    patterns = model.patterns(batch()[0])[0].numpy()                   # (B, F, D)
    selector = model.selector
    u = selector.indicators.numpy()                                     # (T, D)
    heads, k = 2, D // 2
    q = (u @ selector.query.kernel.numpy()).reshape(3, heads, k)
    keys = (patterns @ selector.key.kernel.numpy()).reshape(B, F, heads, k)
    values = (patterns @ selector.value.kernel.numpy()).reshape(B, F, heads, k)
    scores = np.einsum("thk,bfhk->bthf", q, keys) / np.sqrt(k)
    alpha = np.exp(scores - scores.max(-1, keepdims=True))
    alpha /= alpha.sum(-1, keepdims=True)
    expected = np.einsum("bthf,bfhk->bthk", alpha, values).reshape(B, 3, D)
    weights, _ = selector.weights_and_values(patterns)
    np.testing.assert_allclose(weights.numpy(), alpha, rtol=1e-5, atol=1e-6)
    for t, selection in enumerate(selector(patterns)):
        np.testing.assert_allclose(selection.numpy(), expected[:, t], rtol=1e-4, atol=1e-5)


def layer_norm(x, layer):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + layer.epsilon) * layer.gamma.numpy() + layer.beta.numpy()


def mab_numpy(block, query, key):
    """MAB(Q, K) written out per head as the Set Transformer defines it.

    query (B, n, d), key (B, m, d) -> (B, n, d); a bias the block lacks counts as 0.
    """
    d, h = block.dim, block.num_heads
    k = d // h
    w = {f"w_{name}": np.asarray(block.kernel_matrix(name))
         for name in ("query", "key", "value", "output")}
    w.update({name: np.asarray(getattr(block, name)) for name in ("b_query", "b_value", "b_output")})
    b_key = block.b_key.numpy() if block.b_key is not None else np.zeros(d, "float32")
    out = np.zeros(query.shape[:2] + (d,))
    for j in range(h):
        cols = slice(j * k, (j + 1) * k)
        q = query @ w["w_query"][:, cols] + w["b_query"][cols]             # (B, n, k)
        keys = key @ w["w_key"][:, cols] + b_key[cols]                      # (B, m, k)
        values = key @ w["w_value"][:, cols] + w["b_value"][cols]
        scores = q @ keys.transpose(0, 2, 1) / np.sqrt(k)                   # (B, n, m)
        alpha = np.exp(scores - scores.max(-1, keepdims=True))
        alpha /= alpha.sum(-1, keepdims=True)
        out += (alpha @ values) @ w["w_output"][cols]
    a = layer_norm(query + out + w["b_output"], block.norm_attention)
    ff = block.feed_forward
    return layer_norm(a + np.maximum(a @ ff.kernel.numpy() + ff.bias.numpy(), 0), block.norm_output)


def randomise(layer, seed):
    """Every weight of `layer` set to N(0, 0.5^2), biases and norms included."""
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))


def test_set_attention_blocks_against_numpy():
    """attend, summarise (scores folded, biases moved past the softmax) and ISAB equal the
    per-head textbook formula on random weights."""
    from keras_models.apem import InducedSetAttention

    isab = InducedSetAttention(dim=8, num_heads=2, num_inducing=3)
    x = np.random.default_rng(0).normal(size=(4, 5, 8)).astype("float32")
    isab(x)
    randomise(isab, 1)
    points = isab.inducing.numpy()
    summary = mab_numpy(isab.summarise, np.broadcast_to(points, (4, 3, 8)), x).astype("float32")
    np.testing.assert_allclose(isab.summarise.summarise(isab.inducing, x), summary, atol=2e-5)
    np.testing.assert_allclose(isab.broadcast.attend(x, summary), mab_numpy(isab.broadcast, x, summary),
                               atol=2e-5)
    np.testing.assert_allclose(isab(x), mab_numpy(isab.broadcast, x, summary), atol=2e-5)
    assert isab.summarise.b_key is None and isab.broadcast.b_key is not None


def test_transformer_groups_in_field_order():
    """Non-contiguous groups come back in field order: the layer equals each group's
    block applied to its own fields."""
    model = build(field_groups=[["x", "a"], ["b", "c", "y"]], se_reduction=1)
    fields = model.embedding(batch()[0]).numpy()                       # (B, F, D): a b c x y
    dgt = model.transformer
    patterns, gates = dgt(fields, return_gates=True)
    expected = np.zeros_like(fields)
    for group, block in zip(dgt.groups, dgt.group_blocks[0]):
        expected[:, group] = block(fields[:, group]).numpy()
    expected = gates.numpy()[..., None] * expected
    np.testing.assert_allclose(patterns.numpy(), fields + expected, rtol=1e-5, atol=1e-5)


def test_xla_by_default_only_without_a_gradient_rule():
    from keras_models.registry import jit_compile_setting
    from keras_models.apem import APEM
    from keras_models.shared_bottom import SharedBottom

    assert build().jit_compile is True
    assert build(gradient_rule="pcgrad").jit_compile is False
    assert build(jit_compile="off").jit_compile is False
    hp = SharedBottom.hparams_class.from_dict({})
    assert jit_compile_setting(SharedBottom, hp) == "auto"       # Keras' rule: CPUs without XLA
    with pytest.raises(ValueError, match="jit_compile 'on' does not work with gradient_rule 'htlnet'"):
        build(jit_compile="on", gradient_rule="htlnet")
    with pytest.raises(ValueError, match="jit_compile must be one of auto, on, off; got 'yes'"):
        jit_compile_setting(APEM, APEM.hparams_class.from_dict({"jit_compile": "yes"}))
