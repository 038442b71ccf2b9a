"""How a model turns its core tower's output into E[y | x] and a training loss.

A chain may end in a non-negative continuous core target y (spend, revenue,
watch time). Bids and expected-value rankings need its conditional mean
E[y | x], so the served `<target>_pred` is that mean under every head except
"regression". The model's core tower ends in a linear layer of `units`
outputs, `raw` (batch, units); the head owns everything after it.

  decomposition  E[y|x] = P(last step | x) * E[y | last step, x]. The tower's
                 single output is the value v(x) = E[y | last step, x], trained
                 by squared error only on the rows where the last step happened,
                 on the z-score of y over those rows. Needs a gated target (y is
                 0 whenever the last step is 0); P(last step) is the chain's own
                 prediction.
  ziln           zero-inflated log-normal (Wang, Liu and Miao, "A Deep
                 Probabilistic Model for Customer Lifetime Value Prediction",
                 2019): three outputs, the logit of q = P(y > 0 | x) and the mean
                 mu and scale sigma of log(y / s) given y > 0, s a fixed scale (the
                 mean positive training label). Loss: BCE(1[y > 0], q) plus
                 1[y > 0] * the log-normal negative log-likelihood, over all rows.
                 E[y|x] = q * s * exp(mu + sigma^2 / 2).
  regression     squared error on the target's z-score (of y or of log1p(y),
                 `target_transform`) over all rows, inverted. With log1p this
                 estimates exp(E[log1p y]) - 1, a typical value below the mean: for
                 users who only rank by it.

Which one is the default, and why, is in docs/models.md.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_models.layers import PACKAGE, TargetScaler

CORE_HEADS = ("decomposition", "ziln", "regression")
_MAX_LOG_MEAN = 30.0      # exp(30) * scale stays far inside float32
_MIN_SIGMA = 1e-3


def masked_mean(values, mask):
    """Mean of values (B,) over the rows where mask (B,) is 1, distribution-aware.

    Under a tf.distribute strategy each replica's loss is later divided by the
    replica count R and the gradients summed, so each replica divides its sum by
    the replicas' mean count: the total is the mean over the global batch's rows.
    """
    count = ops.maximum(ops.sum(mask), 1.0)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, ops.sum(mask))
        count = ops.maximum(total, 1.0) / context.num_replicas_in_sync
    return ops.sum(mask * values) / count


@keras.saving.register_keras_serializable(package=PACKAGE)
class RegressionHead(keras.layers.Layer):
    """One output z on the scaled target; prediction inverse(z)."""

    units = 1

    def __init__(self, transform: str = "log1p_z_score", **kwargs):
        super().__init__(**kwargs)
        self.transform = transform
        self.scaler = TargetScaler(transform, name="target_scaler")

    def adapt(self, values, condition=None) -> None:
        self.scaler.adapt(values)

    def initial_bias(self, values, condition):
        """The output bias at the training prior: None, since 0 is the scaled target's mean."""
        return None

    def mean(self, raw, last_prob):
        """raw (B, 1), last_prob (B,) -> (B,) on the original scale."""
        return self.scaler.inverse(raw[:, 0])

    def loss(self, raw, y, condition):
        """raw (B, 1), y (B,), condition (B,) 0/1 -> scalar."""
        return ops.mean(ops.square(raw[:, 0] - self.scaler(y)))

    def get_config(self):
        return {**super().get_config(), "transform": self.transform}


@keras.saving.register_keras_serializable(package=PACKAGE)
class DecompositionHead(keras.layers.Layer):
    """One output: the z-scored value on the rows where the last step happened."""

    units = 1

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.value_mean = self.add_weight(name="value_mean", shape=(), initializer="zeros",
                                          trainable=False)
        self.value_std = self.add_weight(name="value_std", shape=(), initializer="ones",
                                         trainable=False)

    def adapt(self, values, condition=None) -> None:
        """Mean and std of y on the rows where `condition` is 1 (y > 0 if no condition)."""
        values = np.asarray(values, np.float64).ravel()
        rows = (values > 0) if condition is None else np.asarray(condition).ravel() == 1
        if rows.any():
            self.value_mean.assign(float(values[rows].mean()))
            self.value_std.assign(float(max(values[rows].std(), 1e-6)))

    def initial_bias(self, values, condition):
        """None: 0 is already the z-scored value's mean on the last step's rows."""
        return None

    def value(self, raw):
        """E[y | last step, x] (B,), never negative."""
        return ops.maximum(raw[:, 0] * self.value_std + self.value_mean, 0.0)

    def mean(self, raw, last_prob):
        return last_prob * self.value(raw)

    def loss(self, raw, y, condition):
        z = (ops.cast(y, "float32") - self.value_mean) / self.value_std
        return masked_mean(ops.square(raw[:, 0] - z), condition)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ZILNHead(keras.layers.Layer):
    """Three outputs: logit of P(y > 0), mu, and sigma (by softplus) of log(y / scale)."""

    units = 3

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.scale = self.add_weight(name="scale", shape=(), initializer="ones", trainable=False)

    def adapt(self, values, condition=None) -> None:
        values = np.asarray(values, np.float64).ravel()
        if (values > 0).any():
            self.scale.assign(float(values[values > 0].mean()))

    def initial_bias(self, values, condition):
        """(3,) biases at the training prior: logit of the positive share, and the mean
        and (through softplus) the std of log(y / scale) on the positive rows; None
        when no training value is positive. Call after `adapt`."""
        values = np.asarray(values, np.float64).ravel()
        positive = values[values > 0]
        if not positive.size:
            return None
        share = np.clip(positive.size / values.size, 1e-4, 1 - 1e-4)
        log_y = np.log(positive / float(self.scale.numpy()))
        sigma = max(float(log_y.std()) - _MIN_SIGMA, 1e-2)
        inverse_softplus = sigma + math.log(-math.expm1(-sigma))
        return np.array([math.log(share / (1 - share)), float(log_y.mean()), inverse_softplus])

    @staticmethod
    def _parts(raw):
        return raw[:, 0], raw[:, 1], ops.softplus(raw[:, 2]) + _MIN_SIGMA

    def mean(self, raw, last_prob):
        logit, mu, sigma = self._parts(raw)
        log_mean = ops.minimum(mu + 0.5 * ops.square(sigma), _MAX_LOG_MEAN)
        return ops.sigmoid(logit) * self.scale * ops.exp(log_mean)

    def loss(self, raw, y, condition):
        logit, mu, sigma = self._parts(raw)
        y = ops.cast(y, "float32")
        positive = ops.cast(y > 0, "float32")
        # BCE from the logit, in the numerically stable form.
        classification = ops.mean(ops.relu(logit) - logit * positive
                                  + ops.log1p(ops.exp(-ops.abs(logit))))
        log_y = ops.log(ops.where(y > 0, y / self.scale, 1.0))
        nll = (log_y + ops.log(sigma) + 0.5 * math.log(2 * math.pi)
               + 0.5 * ops.square((log_y - mu) / sigma))
        return classification + ops.mean(positive * nll)


def make_core_head(name: str, target_transform: str = "log1p_z_score"):
    if name == "decomposition":
        return DecompositionHead(name="core_head")
    if name == "ziln":
        return ZILNHead(name="core_head")
    if name == "regression":
        return RegressionHead(target_transform, name="core_head")
    raise ValueError(f"core_head must be one of {CORE_HEADS}, got {name!r}")
