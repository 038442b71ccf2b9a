"""MMoE (Ma et al., KDD 2018): shared experts, a softmax gate per task."""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from keras_models.base import PACKAGE, CommonHParams, Heads, MultiTaskModel, marginal_heads
from keras_models.layers import MLP


@dataclasses.dataclass(frozen=True)
class MMoEHParams(CommonHParams):
    num_experts: int = 4
    expert_units: tuple[int, ...] = (128, 64)
    tower_units: tuple[int, ...] = (32,)
    dropout: float = 0.0


@keras.saving.register_keras_serializable(package=PACKAGE)
class MMoE(MultiTaskModel):
    """e (B, F*d) -> K experts (B, K, h); task t input sum_k softmax(W_t e)_k E_k -> tower."""

    hparams_class = MMoEHParams

    def __init__(self, input_layout, task_layout, hparams=None, **kwargs):
        super().__init__(input_layout, task_layout, hparams, **kwargs)
        hp = self.hparams
        labels = self.task_layout.label_names
        self.experts = [MLP(hp.expert_units, hp.dropout, name=f"expert_{k}")
                        for k in range(hp.num_experts)]
        self.gates = [keras.layers.Dense(hp.num_experts, activation="softmax", name=f"gate_{l}")
                      for l in labels]
        self.towers = [MLP(hp.tower_units, hp.dropout, name=f"tower_{l}") for l in labels]
        self.heads = self.output_layers()

    def compute_heads(self, fields, training=False) -> Heads:
        e = ops.reshape(fields, (-1, fields.shape[1] * fields.shape[2]))
        experts = ops.stack([expert(e, training=training) for expert in self.experts], axis=1)
        logits = []
        for gate, tower, head in zip(self.gates, self.towers, self.heads):
            mixed = ops.sum(gate(e)[..., None] * experts, axis=1)           # (B, h)
            logits.append(head(tower(mixed, training=training)))
        return marginal_heads(self.task_layout, logits)
