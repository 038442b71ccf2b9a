"""ESMM (Ma et al., SIGIR 2018), generalised to K steps.

One tower per step predicts the conditional rate c_t; the marginal on the
impression space is m_t = c_1 * ... * c_t, and every step is trained on its
marginal over all impressions (pCTR and pCTCVR for two steps), which avoids
the sample-selection bias of training CVR on clicks only. A continuous core
target gets its own linear tower (MODELS.md §A.11: ESMM-style adaptation [R]).
"""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from keras_models.base import PACKAGE, CommonHParams, Heads, MultiTaskModel, chained_heads
from keras_models.layers import MLP


@dataclasses.dataclass(frozen=True)
class ESMMHParams(CommonHParams):
    tower_units: tuple[int, ...] = (128, 64, 32)
    dropout: float = 0.0


@keras.saving.register_keras_serializable(package=PACKAGE)
class ESMM(MultiTaskModel):
    hparams_class = ESMMHParams

    def __init__(self, input_layout, task_layout, hparams=None, **kwargs):
        super().__init__(input_layout, task_layout, hparams, **kwargs)
        labels = self.task_layout.label_names
        self.towers = [MLP(self.hparams.tower_units, self.hparams.dropout, name=f"tower_{l}")
                       for l in labels]
        self.heads = self.output_layers()

    def compute_heads(self, fields, training=False) -> Heads:
        e = ops.reshape(fields, (-1, fields.shape[1] * fields.shape[2]))
        logits = [head(tower(e, training=training))
                  for tower, head in zip(self.towers, self.heads)]
        return chained_heads(self.task_layout, logits)
