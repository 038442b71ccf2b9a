"""AITM (Xi et al., KDD 2021): adaptive information transfer along the chain.

Task t has its own bottom q_t = MLP(e). The previous task's bottom is carried
over as p_{t-1} = g(q_{t-1}) and fused with q_t by the AIT attention
(keras_models.layers.TaskAttention) into z_t, which feeds task t's tower. The
behavioural-expectation calibrator lambda * sum_t max(m_t - m_{t-1}, 0) keeps
later steps below earlier ones (objective "constrained"). A continuous core
target takes the transfer from the last binary step; the calibrator applies
between binary steps only (MODELS.md §A.11 [R]).
"""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from keras_models.base import PACKAGE, CommonHParams, Heads, MultiTaskModel, marginal_heads
from keras_models.layers import MLP, TaskAttention


@dataclasses.dataclass(frozen=True)
class AITMHParams(CommonHParams):
    bottom_units: tuple[int, ...] = (128, 64)
    tower_units: tuple[int, ...] = (32,)
    dropout: float = 0.0
    objective: str = "constrained"
    constraint_weight: float = 0.6


@keras.saving.register_keras_serializable(package=PACKAGE)
class AITM(MultiTaskModel):
    hparams_class = AITMHParams

    def __init__(self, input_layout, task_layout, hparams=None, **kwargs):
        super().__init__(input_layout, task_layout, hparams, **kwargs)
        hp = self.hparams
        labels = self.task_layout.label_names
        width = hp.bottom_units[-1]
        self.bottoms = [MLP(hp.bottom_units, hp.dropout, name=f"bottom_{l}") for l in labels]
        self.transfers = [keras.layers.Dense(width, activation="relu", name=f"transfer_{l}")
                          for l in labels[:-1]]
        self.attention = [TaskAttention(width, 2, name=f"ait_{l}") for l in labels[1:]]
        self.towers = [MLP(hp.tower_units, hp.dropout, name=f"tower_{l}") for l in labels]
        self.heads = self.output_layers()

    def compute_heads(self, fields, training=False) -> Heads:
        e = ops.reshape(fields, (-1, fields.shape[1] * fields.shape[2]))
        bottoms = [bottom(e, training=training) for bottom in self.bottoms]     # (B, h) each
        fused = [bottoms[0]]
        for t in range(1, len(bottoms)):
            carried = self.transfers[t - 1](fused[t - 1])
            fused.append(self.attention[t - 1]([carried, bottoms[t]]))
        logits = [head(tower(z, training=training))
                  for z, tower, head in zip(fused, self.towers, self.heads)]
        return marginal_heads(self.task_layout, logits)
