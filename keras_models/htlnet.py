"""HTLNet: Hybrid Targets Learning Network (Tang et al., RecSys 2024, arXiv 2403.17442).

A chain of binary tasks ending in a continuous core target. All tasks share the
field embeddings; each task has its own tower. Each binary task's predicted
probability is turned into a label embedding by a Gumbel-softmax sample
(Label Embedding Unit); each later task fuses the earlier tasks' tower
representations and label embeddings with attention (Information Fusion Units)
and reads them next to the shared embedding. Transferred signals are
stop-gradiented, so a later task reaches earlier tasks only through the shared
embedding, where the HTLNet gradient rule (keras_models.gradients) acts.

What follows the paper and what is reconstructed is listed in docs/models.md;
MODELS.md §A holds the specification this follows.
"""

from __future__ import annotations

import dataclasses
import keras
from keras import ops

from keras_models.base import PACKAGE, CommonHParams, Heads, MultiTaskModel
from keras_models.layers import MLP, TaskAttention


@dataclasses.dataclass(frozen=True)
class HTLNetHParams(CommonHParams):
    """Defaults follow the EMBER re-implementation where the paper's are unknown [S/R]."""

    tower_units: tuple[int, ...] = (128, 64, 32)
    label_embedding_dim: int = 10
    ifu_dim: int = 0                 # 0: the first tower width (EMBER)
    dropout: float = 0.0
    tau_start: float = 10.0
    tau_decay: float = 0.9
    tau_decay_steps: int = 5000
    tau_min: float = 0.5
    gumbel_noise: bool = True        # noise in training only; never at inference
    seed: int = 0
    gradient_rule: str = "htlnet"


@keras.saving.register_keras_serializable(package=PACKAGE)
class LabelEmbeddingUnit(keras.layers.Layer):
    """Soft label embedding from a predicted probability, by binary Gumbel-softmax.

    s_1 = sigmoid((logit(p) + log U - log(1 - U)) / tau), s = [s_1, 1 - s_1],
    le = s @ table, with table row 0 the embedding of label 1. The noise term is
    used only when `training` and `noise` are true, so inference is deterministic.

    Call: p (batch,), tau scalar -> (batch, dim).
    """

    def __init__(self, dim: int, noise: bool = True, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.noise = noise
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.table = self.add_weight(name="table", shape=(2, dim),
                                     initializer=keras.initializers.GlorotUniform(seed))

    def call(self, p, tau, training=False):
        p = ops.clip(p, 1e-7, 1 - 1e-7)
        logit = ops.log(p) - ops.log1p(-p)
        if training and self.noise:
            u = keras.random.uniform(ops.shape(p), 1e-6, 1 - 1e-6, seed=self.seed_generator)
            logit = logit + ops.log(u) - ops.log1p(-u)
        s1 = ops.sigmoid(logit / tau)
        soft_label = ops.stack([s1, 1.0 - s1], axis=-1)        # (B, 2)
        return ops.matmul(soft_label, self.table)              # (B, dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "noise": self.noise, "seed": self.seed}


class TemperatureSchedule(keras.callbacks.Callback):
    """tau = max(tau_min, tau_start * tau_decay ** (step // tau_decay_steps)), per batch."""

    def __init__(self, variable, start, decay, decay_steps, minimum):
        super().__init__()
        self.variable = variable
        self.start, self.decay, self.decay_steps, self.minimum = start, decay, decay_steps, minimum
        self.step = 0

    def value_at(self, step: int) -> float:
        return max(self.minimum, self.start * self.decay ** (step // self.decay_steps))

    def on_train_begin(self, logs=None):
        self.step = int(self.model.optimizer.iterations.numpy())
        self.variable.assign(self.value_at(self.step))

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.decay_steps == 0:  # the value only changes at these steps
            self.variable.assign(self.value_at(self.step))


@keras.saving.register_keras_serializable(package=PACKAGE)
class HTLNet(MultiTaskModel):
    """Towers per task, LEU + IFU transfer, stop-gradients as in MODELS.md §A.5.

    Shapes: e = flatten(embed(x)) (B, F*d). Task 1 reads e; task t >= 2 reads
    concat(e, IFU_rep({sg(rep_j)}), IFU_le({le_j})) (B, F*d + 2k). rep_t is the
    first hidden layer of tower t (B, h1). le_t = LEU_t(sg(p_t)) (B, L_d).
    """

    hparams_class = HTLNetHParams
    requires_core_target = True

    def __init__(self, input_layout, task_layout, hparams=None, **kwargs):
        super().__init__(input_layout, task_layout, hparams, **kwargs)
        if not self.task_layout.core_target:
            raise ValueError("HTLNet needs a chain that ends in a continuous core target "
                             "(chain.core_target in the dataset spec)")
        hp = self.hparams
        labels = self.task_layout.label_names
        fusion_dim = hp.ifu_dim or hp.tower_units[0]
        self.temperature = self.add_weight(name="temperature", shape=(),
                                           initializer=keras.initializers.Constant(hp.tau_start),
                                           trainable=False)
        self.representation_layers = [keras.layers.Dense(hp.tower_units[0], activation="relu",
                                                         name=f"tower_{l}_rep") for l in labels]
        self.towers = [MLP(hp.tower_units[1:], hp.dropout, name=f"tower_{l}") for l in labels]
        self.heads = self.output_layers()
        self.label_units = [LabelEmbeddingUnit(hp.label_embedding_dim, hp.gumbel_noise,
                                               seed=hp.seed + i, name=f"leu_{step}")
                            for i, step in enumerate(self.task_layout.steps)]
        # The IFUs of task t fuse the t earlier tasks' vectors.
        self.representation_fusion = [TaskAttention(fusion_dim, t, name=f"ifu_rep_{l}")
                                      for t, l in enumerate(labels[1:], start=1)]
        self.label_fusion = [TaskAttention(fusion_dim, t,
                                           name=f"ifu_le_{l}")
                             for t, l in enumerate(labels[1:], start=1)]

    def compute_heads(self, fields, training=False) -> Heads:
        shared = ops.reshape(fields, (-1, fields.shape[1] * fields.shape[2]))
        steps = self.task_layout.steps
        representations, label_embeddings, probs = [], [], {}
        core = None
        for t, label in enumerate(self.task_layout.label_names):
            if t == 0:
                tower_input = shared
            else:
                tower_input = ops.concatenate([
                    shared,
                    self.representation_fusion[t - 1](representations),
                    self.label_fusion[t - 1](label_embeddings)], axis=-1)
            representation = self.representation_layers[t](tower_input)  # (B, h1)
            output = self.heads[t](self.towers[t](representation, training=training))  # (B, units)
            representations.append(ops.stop_gradient(representation))
            if t < len(steps):
                p = ops.sigmoid(ops.squeeze(output, -1))
                probs[label] = p
                label_embeddings.append(
                    self.label_units[t](ops.stop_gradient(p), self.temperature, training=training))
            else:
                core = output
        return Heads(probs, core)

    def training_callbacks(self):
        hp = self.hparams
        return [TemperatureSchedule(self.temperature, hp.tau_start, hp.tau_decay,
                                    hp.tau_decay_steps, hp.tau_min)]
