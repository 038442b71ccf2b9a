"""The DCN-v2 feature-cross option of the shared input part (keras_models.feature_cross).

The cross layers are keras-rs' FeatureCross; here they are checked against a
hand computation and a NumPy reference, and every model is trained and round
tripped (.keras file and SavedModel) with the option on.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from funnel_data import TASKS, funnel_arrays
from keras_models import registry
from keras_models.feature_cross import FieldCross

MODELS = sorted(registry.MODELS)
CROSS = {"embedding_dim": 4, "feature_cross_layers": 2}


def set_cross(cross, kernel, bias):
    """Sets a full-rank keras_rs FeatureCross' W (D, D) and b (D,)."""
    cross.dense.kernel.assign(np.asarray(kernel, "float32"))
    cross.dense.bias.assign(np.asarray(bias, "float32"))


def test_one_cross_layer_by_hand():
    """x0 = [1, 2]; x0 W = [1*0.5 + 2*1, 1*0 + 2*(-1)] = [2.5, -2]; + b = [2.6, -1.8];
    x0 * that = [2.6, -3.6]; + x0 = [3.6, -1.6]."""
    layer = FieldCross(1)
    fields = np.array([[[1.0], [2.0]]], "float32")                     # (B=1, F=2, d=1)
    layer(fields)
    set_cross(layer.crosses[0], [[0.5, 0.0], [1.0, -1.0]], [0.1, 0.2])
    np.testing.assert_allclose(np.asarray(layer(fields)), [[[3.6], [-1.6]]], rtol=1e-6)


def test_stacked_cross_layers_match_numpy():
    """x_{l+1} = x0 * (x_l W_l + b_l) + x_l for l = 0, 1 on (B=3, F=2, d=3) fields."""
    rng = np.random.default_rng(0)
    fields = rng.normal(size=(3, 2, 3)).astype("float32")
    layer = FieldCross(2)
    layer(fields)
    weights = [(rng.normal(size=(6, 6)), rng.normal(size=6)) for _ in range(2)]
    for cross, (kernel, bias) in zip(layer.crosses, weights):
        set_cross(cross, kernel, bias)
    x0 = fields.reshape(3, 6).astype("float64")
    x = x0
    for kernel, bias in weights:
        x = x0 * (x @ kernel + bias) + x
    np.testing.assert_allclose(np.asarray(layer(fields)), x.reshape(3, 2, 3), rtol=1e-5, atol=1e-5)


def test_low_rank_cross_matches_numpy():
    """projection_dim r: x1 = x0 * ((x0 U) V + b) + x0 with U (D, r), V (r, D)."""
    rng = np.random.default_rng(1)
    fields = rng.normal(size=(4, 3, 2)).astype("float32")             # D = 6
    layer = FieldCross(1, projection_dim=2)
    layer(fields)
    u, v, b = rng.normal(size=(6, 2)), rng.normal(size=(2, 6)), rng.normal(size=6)
    cross = layer.crosses[0]
    cross.down_proj_dense.kernel.assign(u.astype("float32"))
    set_cross(cross, v, b)
    x0 = fields.reshape(4, 6).astype("float64")
    expected = x0 * ((x0 @ u) @ v + b) + x0
    np.testing.assert_allclose(np.asarray(layer(fields)), expected.reshape(4, 3, 2),
                               rtol=1e-5, atol=1e-5)


def test_off_by_default_and_bad_values_rejected():
    features, labels, layout = funnel_arrays(64, sample_seed=1)
    plain = registry.build("shared_bottom", layout, TASKS, {"embedding_dim": 4})
    assert plain.field_cross is None
    assert not any("cross" in v.path for v in plain.weights)
    with pytest.raises(ValueError, match="feature_cross_layers"):
        registry.build("shared_bottom", layout, TASKS, {"feature_cross_layers": -1})
    with pytest.raises(ValueError, match="projection_dim"):
        registry.build("shared_bottom", layout, TASKS,
                       {"feature_cross_layers": 1, "feature_cross_projection_dim": -2})


def serving_module(model, features):
    """The model behind an XLA-compiled tf.function, saved as serving/export.py saves
    it: the module tracks the model's variables, not the Keras model (its optimizer)."""
    module = tf.Module()
    module.model_variables = list(model.variables)
    spec = {name: tf.TensorSpec([None], tf.as_dtype(values.dtype), name=name)
            for name, values in features.items()}
    module.serve = tf.function(lambda inputs: model(inputs, training=False),
                               input_signature=[spec], jit_compile=True)
    return module


@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_and_round_trips_with_crosses(name, tmp_path):
    features, labels, layout = funnel_arrays(1024, sample_seed=2)
    keras.utils.set_random_seed(0)
    model = registry.build(name, layout, TASKS, CROSS)
    model.adapt_to_labels(labels)
    dim = len(layout.field_names) * CROSS["embedding_dim"]
    kernels = [cross.dense.kernel for cross in model.field_cross.crosses]
    assert [tuple(k.shape) for k in kernels] == [(dim, dim)] * 2
    before_kernels = [np.asarray(k).copy() for k in kernels]
    data = tf.data.Dataset.from_tensor_slices((features, labels)).batch(128)
    before = model.evaluate(data, verbose=0, return_dict=True)["loss"]
    model.fit(data, epochs=3, verbose=0, callbacks=model.training_callbacks())
    after = model.evaluate(data, verbose=0, return_dict=True)["loss"]
    assert after < before
    for start, kernel in zip(before_kernels, kernels):
        assert not np.allclose(start, np.asarray(kernel))              # the crosses trained

    expected = model(features)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.field_cross.num_layers == 2
    got = restored(features)
    for key in TASKS.output_keys:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-7)

    tf.saved_model.save(serving_module(model, features), str(tmp_path / "saved"))
    loaded = tf.saved_model.load(str(tmp_path / "saved"))  # kept: it owns the variables
    served = loaded.serve({name: tf.constant(values) for name, values in features.items()})
    for key in TASKS.output_keys:
        np.testing.assert_allclose(served[key], expected[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rule", ["htlnet", "pcgrad"])
def test_gradient_rules_reach_the_crosses(rule):
    """Scope "embeddings" (htlnet) gives the crosses the summed gradient, scope "shared"
    (pcgrad) adjusts them with the embedding tables: either way they train."""
    features, labels, layout = funnel_arrays(256, sample_seed=3)
    keras.utils.set_random_seed(0)
    model = registry.build("shared_bottom", layout, TASKS, {**CROSS, "gradient_rule": rule})
    start = [np.asarray(v).copy() for v in model.field_cross.trainable_variables]
    data = tf.data.Dataset.from_tensor_slices((features, labels)).batch(64)
    model.fit(data, epochs=1, verbose=0)
    for value, variable in zip(start, model.field_cross.trainable_variables):
        assert not np.allclose(value, np.asarray(variable)), variable.path
    if rule == "pcgrad":
        shared = {v.path for v in model.shared_scope_variables((features, labels))}
        assert {v.path for v in model.field_cross.trainable_variables} <= shared
