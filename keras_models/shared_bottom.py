"""Shared-Bottom: one MLP over all field embeddings, one tower per task."""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from keras_models.base import PACKAGE, CommonHParams, Heads, MultiTaskModel, marginal_heads
from keras_models.layers import MLP


@dataclasses.dataclass(frozen=True)
class SharedBottomHParams(CommonHParams):
    bottom_units: tuple[int, ...] = (128, 64)
    tower_units: tuple[int, ...] = (32,)
    dropout: float = 0.0


@keras.saving.register_keras_serializable(package=PACKAGE)
class SharedBottom(MultiTaskModel):
    """e = flatten(embed(x)) (B, F*d) -> bottom MLP (B, h) -> per-task tower -> head.

    Binary heads are sigmoid marginals; the core tower feeds the core head (core_heads).
    """

    hparams_class = SharedBottomHParams

    def __init__(self, input_layout, task_layout, hparams=None, **kwargs):
        super().__init__(input_layout, task_layout, hparams, **kwargs)
        hp = self.hparams
        self.bottom = MLP(hp.bottom_units, hp.dropout, name="bottom")
        labels = self.task_layout.label_names
        self.towers = [MLP(hp.tower_units, hp.dropout, name=f"tower_{label}") for label in labels]
        self.heads = self.output_layers()

    def compute_heads(self, fields, training=False) -> Heads:
        shared = self.bottom(ops.reshape(fields, (-1, fields.shape[1] * fields.shape[2])),
                             training=training)                            # (B, h)
        logits = [head(tower(shared, training=training))  # (B, units) each
                  for tower, head in zip(self.towers, self.heads)]
        return marginal_heads(self.task_layout, logits)
