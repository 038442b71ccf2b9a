"""Keras model pieces against NumPy references, the output contract, serialization."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from keras_models import registry
from keras_models.layers import FieldEmbedding, TargetScaler
from funnel_data import random_batch
from keras_models.layout import InputLayout, TaskLayout

INPUTS = InputLayout({"a": 5, "b": 7}, ("x",))
TASKS = TaskLayout(("click", "buy"), "amount")


def batch(n=64, seed=0):
    return random_batch(INPUTS, n, seed)


def test_field_embedding_matches_per_field_lookup():
    layer = FieldEmbedding(INPUTS.to_config(), embedding_dim=3)
    features, _ = batch(8)
    out = np.asarray(layer(features))
    table = np.asarray(layer.table)
    kernel, bias = np.asarray(layer.numeric_kernel), np.asarray(layer.numeric_bias)
    assert out.shape == (8, 3, 3)
    np.testing.assert_allclose(out[:, 0], table[features["a"]])
    np.testing.assert_allclose(out[:, 1], table[5 + features["b"]])  # offset by field a's 5 rows
    np.testing.assert_allclose(out[:, 2], features["x"][:, None] * kernel[0] + bias[0], rtol=1e-6)


@pytest.mark.parametrize("transform", ["z_score", "log1p_z_score"])
def test_target_scaler_against_numpy(transform):
    values = np.array([0.0, 1.0, 10.0, 100.0], "float32")
    scaler = TargetScaler(transform)
    scaler.adapt(values)
    pre = np.log1p(values) if transform == "log1p_z_score" else values
    expected = (pre - pre.mean()) / pre.std()
    np.testing.assert_allclose(np.asarray(scaler(values)), expected, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(scaler.inverse(scaler(values))), values, rtol=1e-4, atol=1e-4)
    assert float(scaler.inverse(np.array([-50.0], "float32"))[0]) == 0.0  # never negative


def test_outputs_follow_the_contract_and_losses_match_numpy():
    tasks = TaskLayout(("click", "buy"), "amount", core_head="regression")
    model = registry.build("shared_bottom", INPUTS, tasks, {"embedding_dim": 4})
    features, labels = batch()
    model.adapt_target(labels["amount"])
    outputs = model(features)
    assert set(TASKS.output_keys) == {"click_prob", "buy_prob", "amount_pred", "score"}
    assert set(TASKS.output_keys) <= set(outputs)
    for key in TASKS.output_keys:
        assert outputs[key].shape == (64,)
    np.testing.assert_array_equal(outputs["score"], outputs["amount_pred"])
    losses = model.task_losses(labels, outputs)
    p = np.asarray(outputs["click_prob"])
    y = labels["click"]
    np.testing.assert_allclose(float(losses["click"]),
                               -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)), rtol=1e-5)
    z = np.asarray(model.core_head.scaler(labels["amount"]))
    np.testing.assert_allclose(float(losses["amount"]),
                               np.mean((np.asarray(outputs["amount_raw"])[:, 0] - z) ** 2), rtol=1e-5)


def test_binary_only_chain_scores_by_last_step():
    model = registry.build("shared_bottom", INPUTS, TaskLayout(("click", "buy")), {})
    outputs = model(batch()[0])
    assert "amount_pred" not in outputs
    np.testing.assert_array_equal(outputs["score"], outputs["buy_prob"])


def test_training_reduces_loss_and_keras_file_round_trips(tmp_path):
    keras.utils.set_random_seed(1)
    model = registry.build("shared_bottom", INPUTS, TASKS, {"embedding_dim": 4})
    features, labels = batch(512)
    model.adapt_target(labels["amount"])
    data = tf.data.Dataset.from_tensor_slices((features, labels)).batch(64).repeat()
    history = model.fit(data, steps_per_epoch=20, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.get_config()["hparams"] == model.get_config()["hparams"]
    for key, value in model(features).items():
        np.testing.assert_allclose(restored(features)[key], value, rtol=1e-6)


def test_unknown_model_and_hparams_are_rejected():
    with pytest.raises(ValueError, match="unknown model 'nope'; choose one of aitm, apem, esmm, htlnet, mmoe, ple, shared_bottom"):
        registry.build("nope", INPUTS, TASKS)
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['depth'\]"):
        registry.build("shared_bottom", INPUTS, TASKS, {"depth": 3})


def test_cli_lists_every_registered_model():
    from tfx_pipeline.cli import MODEL_NAMES

    assert sorted(MODEL_NAMES) == sorted(registry.MODELS)


def test_fit_and_evaluate_switch_tf_data_autotuning_off(monkeypatch):
    """The autotuner made fit/evaluate return on its own schedule (keras_models.input_options)."""
    from keras_models.input_options import steady_input

    data = tf.data.Dataset.range(4).prefetch(tf.data.AUTOTUNE)
    assert data.options().autotune.enabled is not False
    assert steady_input(data).options().autotune.enabled is False
    assert list(steady_input(data).as_numpy_iterator()) == [0, 1, 2, 3]
    arrays = {"x": np.zeros(3)}
    assert steady_input(arrays) is arrays and steady_input(None) is None

    seen = []
    monkeypatch.setattr(keras.Model, "fit", lambda self, x=None, y=None, *a, validation_data=None,
                        **k: seen.extend([x, validation_data]))
    monkeypatch.setattr(keras.Model, "evaluate", lambda self, x=None, *a, **k: seen.append(x))
    model = registry.build("shared_bottom", INPUTS, TASKS, {"embedding_dim": 4})
    model.fit(data, validation_data=data)
    model.evaluate(data)
    assert [d.options().autotune.enabled for d in seen] == [False, False, False]


def test_step_rates_by_hand():
    from keras_models.base import step_rates

    click = np.array([1, 1, 0, 0, 1, 0, 0, 0], "float32")  # 3 of 8
    buy = np.array([1, 0, 0, 0, 0, 0, 0, 0], "float32")    # 1 of 8; 1 of the 3 clicks
    assert step_rates([click, buy], conditional=False) == pytest.approx([3 / 8, 1 / 8])
    assert step_rates([click, buy], conditional=True) == pytest.approx([3 / 8, 1 / 3])
    assert step_rates([np.zeros(4), np.zeros(4)], conditional=True) == pytest.approx([0.0, 0.5])


@pytest.mark.parametrize("name,conditional", [("shared_bottom", False), ("mmoe", False),
                                              ("ple", False), ("aitm", False), ("esmm", True),
                                              ("apem", True), ("htlnet", False)])
def test_output_biases_start_at_the_training_prior(name, conditional):
    """A zero-input tower would predict each step's training rate: the step heads'
    biases are its logit (of the conditional rate for chained models)."""
    model = registry.build(name, INPUTS, TASKS, {"embedding_dim": 4})  # the default: on
    features, labels = batch(400)
    model.adapt_to_labels(labels)
    click, buy = labels["click"], labels["buy"]
    rates = [click.mean(), buy[click == 1].mean() if conditional else buy.mean()]
    for head, rate in zip(model.heads[:2], rates):
        assert float(head.bias.numpy()[0]) == pytest.approx(np.log(rate / (1 - rate)), rel=1e-5)
    np.testing.assert_array_equal(model.heads[2].bias.numpy(), 0.0)  # decomposition: z = 0
    untouched = registry.build(name, INPUTS, TASKS, {"embedding_dim": 4, "prior_bias": False})
    untouched.adapt_to_labels(labels)
    for head in untouched.heads:
        np.testing.assert_array_equal(head.bias.numpy(), 0.0)
