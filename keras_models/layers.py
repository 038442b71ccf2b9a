"""Layers shared by every model: field embeddings, MLPs, target scaling."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_models.layout import InputLayout

PACKAGE = "funnelstack"


@keras.saving.register_keras_serializable(package=PACKAGE)
class FieldEmbedding(keras.layers.Layer):
    """Embeds every input field into a d-dimensional vector.

    Categorical fields share one concatenated table with per-field row offsets
    (one gather instead of F); numeric field j maps to `x_j * v_j + b_j`.

    Call: dict of (batch,) tensors -> (batch, F, d), fields ordered as
    `InputLayout.field_names` (categorical first, then numeric).
    """

    def __init__(self, input_layout: dict, embedding_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.input_layout = InputLayout.from_config(input_layout)
        self.embedding_dim = embedding_dim
        sizes = list(self.input_layout.categorical.values())
        self._offsets = np.cumsum([0] + sizes[:-1]).astype("int64")
        self.table = None
        if sizes:
            self.table = self.add_weight(
                name="categorical_table", shape=(int(sum(sizes)), embedding_dim),
                initializer=keras.initializers.RandomNormal(stddev=0.05))
        n_numeric = len(self.input_layout.numeric)
        if n_numeric:
            self.numeric_kernel = self.add_weight(
                name="numeric_kernel", shape=(n_numeric, embedding_dim),
                initializer=keras.initializers.RandomNormal(stddev=0.05))
            self.numeric_bias = self.add_weight(
                name="numeric_bias", shape=(n_numeric, embedding_dim), initializer="zeros")

    def call(self, inputs):
        parts = []
        if self.table is not None:
            ids = ops.stack([ops.cast(inputs[name], "int64")
                             for name in self.input_layout.categorical], axis=1)  # (B, Fc)
            parts.append(ops.take(self.table, ids + self._offsets, axis=0))   # (B, Fc, d)
        if self.input_layout.numeric:
            values = ops.stack([ops.cast(inputs[name], "float32")
                                for name in self.input_layout.numeric], axis=1)  # (B, Fn)
            parts.append(values[:, :, None] * self.numeric_kernel + self.numeric_bias)
        return ops.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def get_config(self):
        return {**super().get_config(), "input_layout": self.input_layout.to_config(),
                "embedding_dim": self.embedding_dim}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MLP(keras.layers.Layer):
    """Dense ReLU stack: (batch, in) -> (batch, units[-1])."""

    def __init__(self, units, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.units = tuple(units)
        self.dropout = dropout
        self.dense_layers = [keras.layers.Dense(u, activation="relu") for u in self.units]
        self.dropout_layers = [keras.layers.Dropout(dropout) for _ in self.units] if dropout else []

    def call(self, x, training=False):
        for i, dense in enumerate(self.dense_layers):
            x = dense(x)
            if self.dropout_layers:
                x = self.dropout_layers[i](x, training=training)
        return x

    def get_config(self):
        return {**super().get_config(), "units": list(self.units), "dropout": self.dropout}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TaskAttention(keras.layers.Layer):
    """Attention over a few task vectors: AITM's AIT module and HTLNet's IFU.

    For inputs u_1..u_n, each (batch, D): v_j = W1 u_j, k_j = W2 u_j, q_j = W3 u_j,
    alpha_j = softmax_j(<k_j, q_j> / sqrt(dim)), output sum_j alpha_j v_j (batch, dim).
    With one input the weight is 1 and the output is W1 u_1, so no key or query
    projection is created.
    """

    def __init__(self, dim: int, num_inputs: int, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_inputs = dim, num_inputs
        self.value = keras.layers.Dense(dim, name="value")
        self.key = keras.layers.Dense(dim, name="key") if num_inputs > 1 else None
        self.query = keras.layers.Dense(dim, name="query") if num_inputs > 1 else None

    def call(self, vectors):
        if len(vectors) != self.num_inputs:
            raise ValueError(f"expected {self.num_inputs} vectors, got {len(vectors)}")
        if self.num_inputs == 1:
            return self.value(vectors[0])
        u = ops.stack(vectors, axis=1)                                   # (B, n, D)
        v, k, q = self.value(u), self.key(u), self.query(u)              # (B, n, dim)
        weights = ops.softmax(ops.sum(k * q, axis=-1) / math.sqrt(self.dim), axis=1)  # (B, n)
        return ops.sum(weights[..., None] * v, axis=1)                  # (B, dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_inputs": self.num_inputs}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TargetScaler(keras.layers.Layer):
    """Scales a non-negative continuous target for training, and back.

    "z_score": z = (y - mean) / std;  "log1p_z_score": z = (log1p(y) - mean) / std.
    `adapt(values)` sets mean and std from training labels. `inverse` maps a
    prediction back to the original scale, clipped at 0. Shapes: (batch,) -> (batch,).
    """

    TRANSFORMS = ("z_score", "log1p_z_score")

    def __init__(self, transform: str = "log1p_z_score", **kwargs):
        super().__init__(**kwargs)
        if transform not in self.TRANSFORMS:
            raise ValueError(f"target transform must be one of {self.TRANSFORMS}, got {transform!r}")
        self.transform = transform
        self.mean = self.add_weight(name="mean", shape=(), initializer="zeros", trainable=False)
        self.std = self.add_weight(name="std", shape=(), initializer="ones", trainable=False)

    def _pre(self, y):
        return ops.log1p(ops.maximum(y, 0.0)) if self.transform == "log1p_z_score" else y

    def adapt(self, values) -> None:
        pre = np.asarray(self._pre(ops.convert_to_tensor(np.asarray(values, "float32"))))
        self.mean.assign(float(pre.mean()))
        self.std.assign(float(max(pre.std(), 1e-6)))

    def call(self, y):
        return (self._pre(ops.cast(y, "float32")) - self.mean) / self.std

    def inverse(self, z):
        t = z * self.std + self.mean
        y = ops.expm1(t) if self.transform == "log1p_z_score" else t
        return ops.maximum(y, 0.0)

    def get_config(self):
        return {**super().get_config(), "transform": self.transform}
