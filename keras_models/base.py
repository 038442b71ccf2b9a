"""The base class every multi-task model derives from.

Subclasses build their layers and implement `compute_heads`, which returns the
marginal probability of each binary step and, where the chain has one, the
core-target prediction on the scaled training scale. This class turns heads
into the output contract (see `layout`), owns the losses and the training step,
and tracks one loss per task.

Losses (entire impression space, every row counts for every task):
  binary step s:  mean BCE(y_s, p_s)
  core target:    mean (z_hat - scale(y))^2
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import keras
import tensorflow as tf
from keras import ops

from keras_models.layers import PACKAGE, FieldEmbedding, TargetScaler
from keras_models.layout import (SCORE_KEY, InputLayout, TaskLayout, pred_key, prob_key,
                                 scaled_key)

_EPSILON = 1e-7


@dataclasses.dataclass(frozen=True)
class Heads:
    """What a model predicts before the output contract is applied.

    probs: step -> (batch,) marginal probability on the impression space.
    core_scaled: (batch,) core-target prediction on the scaled scale, or None.
    """

    probs: Mapping[str, object]
    core_scaled: object = None


class MultiTaskModel(keras.Model):
    """Base model: contract outputs, per-task losses, the training step."""

    hparams_class = None  # set by subclasses to their typed hyper-parameter dataclass

    def __init__(self, input_layout, task_layout, hparams=None, **kwargs):
        super().__init__(**kwargs)
        self.input_layout = (input_layout if isinstance(input_layout, InputLayout)
                             else InputLayout.from_config(input_layout))
        self.task_layout = (task_layout if isinstance(task_layout, TaskLayout)
                            else TaskLayout.from_config(task_layout))
        self.hparams = self.hparams_class.from_dict(hparams or {})
        self.embedding = FieldEmbedding(self.input_layout.to_config(), self.hparams.embedding_dim,
                                        name="field_embedding")
        tasks = self.task_layout
        self.target_scaler = (TargetScaler(tasks.target_transform, name="target_scaler")
                              if tasks.core_target else None)
        self.loss_trackers = {label: keras.metrics.Mean(name=f"{label}_loss")
                              for label in tasks.label_names}
        self.total_loss_tracker = keras.metrics.Mean(name="loss")

    # -- to be implemented by subclasses ---------------------------------------
    def compute_heads(self, inputs, training=False) -> Heads:
        raise NotImplementedError

    # -- outputs ---------------------------------------------------------------
    def call(self, inputs, training=False):
        heads = self.compute_heads(inputs, training=training)
        tasks = self.task_layout
        outputs = {prob_key(step): heads.probs[step] for step in tasks.steps}
        if tasks.core_target:
            outputs[scaled_key(tasks.core_target)] = heads.core_scaled
            outputs[pred_key(tasks.core_target)] = self.target_scaler.inverse(heads.core_scaled)
            outputs[SCORE_KEY] = outputs[pred_key(tasks.core_target)]
        else:
            outputs[SCORE_KEY] = outputs[prob_key(tasks.steps[-1])]
        return outputs

    @property
    def shared_variables(self):
        """Variables that every task's loss reaches: the field embedding tables."""
        return self.embedding.trainable_variables

    # -- losses and training ---------------------------------------------------
    def task_losses(self, labels, outputs) -> dict:
        """Per-task scalar losses, keyed by label name."""
        losses = {}
        for step in self.task_layout.steps:
            y = ops.cast(ops.reshape(labels[step], (-1,)), "float32")
            p = ops.clip(outputs[prob_key(step)], _EPSILON, 1 - _EPSILON)
            losses[step] = -ops.mean(y * ops.log(p) + (1 - y) * ops.log(1 - p))
        target = self.task_layout.core_target
        if target:
            z = self.target_scaler(ops.reshape(labels[target], (-1,)))
            losses[target] = ops.mean(ops.square(outputs[scaled_key(target)] - z))
        return losses

    def _record(self, losses, total):
        for name, value in losses.items():
            self.loss_trackers[name].update_state(value)
        self.total_loss_tracker.update_state(total)
        return {m.name: m.result() for m in self.metrics}

    def compute_gradients(self, tape, losses, total):
        """Gradients of the training objective for `self.trainable_variables`.

        The plain rule: the gradient of the summed loss. Models and gradient
        handlers that treat shared variables differently override this.
        """
        return tape.gradient(total, self.trainable_variables)

    def train_step(self, data):
        features, labels = data[0], data[1]
        with tf.GradientTape(persistent=True) as tape:
            outputs = self(features, training=True)
            losses = self.task_losses(labels, outputs)
            total = ops.sum(ops.stack(list(losses.values())))
            if self.losses:
                total = total + ops.sum(ops.stack(self.losses))
        gradients = self.compute_gradients(tape, losses, total)
        del tape
        self.optimizer.apply(gradients, self.trainable_variables)
        return self._record(losses, total)

    def test_step(self, data):
        features, labels = data[0], data[1]
        outputs = self(features, training=False)
        losses = self.task_losses(labels, outputs)
        return self._record(losses, ops.sum(ops.stack(list(losses.values()))))

    @property
    def metrics(self):
        return [self.total_loss_tracker, *self.loss_trackers.values()]

    def adapt_target(self, values) -> None:
        """Sets the core-target scaling from training labels (numpy, shape (n,))."""
        if self.target_scaler is not None:
            self.target_scaler.adapt(values)

    def get_config(self):
        return {**super().get_config(), "input_layout": self.input_layout.to_config(),
                "task_layout": self.task_layout.to_config(),
                "hparams": dataclasses.asdict(self.hparams)}


def hparams_from_dict(cls, values: Mapping):
    """Builds a hyper-parameter dataclass, rejecting unknown names with a clear error."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s) {unknown} for {cls.__name__}; "
                         f"known: {sorted(fields)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**converted)


__all__ = ["Heads", "MultiTaskModel", "hparams_from_dict", "PACKAGE"]
