"""PLE (Tang et al., RecSys 2020): stacked Customized Gate Control levels.

Each level has task-specific experts per task and shared experts. A task's gate
mixes its own experts and the shared ones; the shared gate (on every level but
the last) mixes all experts and feeds the next level's shared input.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from keras_models.base import PACKAGE, CommonHParams, Heads, MultiTaskModel, marginal_heads
from keras_models.layers import MLP


@dataclasses.dataclass(frozen=True)
class PLEHParams(CommonHParams):
    num_levels: int = 1
    shared_experts: int = 2
    specific_experts: int = 2
    expert_units: tuple[int, ...] = (128, 64)
    tower_units: tuple[int, ...] = (32,)
    dropout: float = 0.0


def _mix(gate_layer, gate_input, experts):
    """sum_k softmax(W x)_k E_k: gate input (B, D), experts (B, K, h) -> (B, h)."""
    return ops.sum(gate_layer(gate_input)[..., None] * experts, axis=1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PLE(MultiTaskModel):
    hparams_class = PLEHParams

    def __init__(self, input_layout, task_layout, hparams=None, **kwargs):
        super().__init__(input_layout, task_layout, hparams, **kwargs)
        hp = self.hparams
        labels = self.task_layout.label_names
        self.specific, self.shared, self.task_gates, self.shared_gates = [], [], [], []
        for level in range(hp.num_levels):
            self.specific.append([[MLP(hp.expert_units, hp.dropout, name=f"l{level}_{l}_expert{k}")
                                   for k in range(hp.specific_experts)] for l in labels])
            self.shared.append([MLP(hp.expert_units, hp.dropout, name=f"l{level}_shared_expert{k}")
                                for k in range(hp.shared_experts)])
            self.task_gates.append([keras.layers.Dense(hp.specific_experts + hp.shared_experts,
                                                       activation="softmax", name=f"l{level}_gate_{l}")
                                    for l in labels])
            total = len(labels) * hp.specific_experts + hp.shared_experts
            self.shared_gates.append(keras.layers.Dense(total, activation="softmax",
                                                        name=f"l{level}_shared_gate")
                                     if level < hp.num_levels - 1 else None)
        self.towers = [MLP(hp.tower_units, hp.dropout, name=f"tower_{l}") for l in labels]
        self.heads = self.output_layers()

    def compute_heads(self, fields, training=False) -> Heads:
        e = ops.reshape(fields, (-1, fields.shape[1] * fields.shape[2]))
        task_inputs = [e] * len(self.task_layout.label_names)
        shared_input = e
        for level in range(self.hparams.num_levels):
            shared = [expert(shared_input, training=training) for expert in self.shared[level]]
            specific = [[expert(x, training=training) for expert in experts]
                        for x, experts in zip(task_inputs, self.specific[level])]
            next_inputs = [_mix(gate, x, ops.stack(own + shared, axis=1))
                           for gate, x, own in zip(self.task_gates[level], task_inputs, specific)]
            if self.shared_gates[level] is not None:
                everything = [o for own in specific for o in own] + shared
                shared_input = _mix(self.shared_gates[level], shared_input,
                                    ops.stack(everything, axis=1))
            task_inputs = next_inputs
        logits = [head(tower(x, training=training))
                  for x, tower, head in zip(task_inputs, self.towers, self.heads)]
        return marginal_heads(self.task_layout, logits)
