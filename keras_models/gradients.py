"""Per-task gradient handling on the shared variables (the field embeddings).

Every model can train with one of these rules (hyper-parameter `gradient_rule`):

  none         the gradient of the summed loss (plain multi-task training)
  htlnet       HTLNet's rule (MODELS.md §A.6): each classification gradient is
               projected off the core (last) task's gradient when they conflict,
               then rescaled toward the core gradient's norm; the core gradient
               is never changed
  pcgrad       PCGrad (Yu et al., 2020): each task gradient is projected off every
               other task gradient it conflicts with, in a fixed order
  metabalance  MetaBalance (He et al., 2022): auxiliary gradients are rescaled
               toward the target (last) task's gradient norm, with moving-average
               norms

Only the shared variables get the rule (the embedding tables, or every variable
two tasks reach: `gradient_scope` in keras_models.base); every other variable
gets the plain gradient of the summed loss. Embedding gradients arrive as `tf.IndexedSlices`;
they are combined on the union of the rows the batch touched, never densified
to the full table, so the cost grows with the batch, not the vocabulary. Rows
no task touched have zero gradient in every task, so the result is identical to
applying the rule to the dense gradients.

Tensor shapes: with T tasks, the rules work on a matrix G of shape (T, N),
N = (touched rows x embedding dim) + the sizes of the dense shared variables.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

RULES = ("none", "htlnet", "pcgrad", "metabalance")
NORM_TIMINGS = ("after_projection", "before_projection")
RATIO_CLIPS = ("upper", "two_sided")
_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class GradientConfig:
    """Knobs of the gradient rules (defaults: MODELS.md recommendations, [R]).

    Attributes:
      rule: one of RULES.
      gamma: relax factor of the magnitude rescaling (htlnet, metabalance);
        0 keeps norms, 1 matches them fully.
      cap: C, the bound on the norm ratio w_t (htlnet).
      projection_strength: alpha in G_t - alpha <G_t,G_c>/|G_c|^2 G_c (htlnet);
        1 is the full projection, EMBER's re-implementation uses 0.5.
      norm_timing: measure |G_t| after the projection (the sequential reading of
        the paper) or before it (EMBER).
      ratio_clip: "upper" uses min(w_t, C); "two_sided" clips to [1/C, C] (EMBER).
      ema_decay: decay of MetaBalance's moving-average norms.
    """

    rule: str = "none"
    gamma: float = 0.1
    cap: float = 10.0
    projection_strength: float = 1.0
    norm_timing: str = "after_projection"
    ratio_clip: str = "upper"
    ema_decay: float = 0.9

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"gradient_rule must be one of {RULES}, got {self.rule!r}")
        if self.norm_timing not in NORM_TIMINGS:
            raise ValueError(f"norm_timing must be one of {NORM_TIMINGS}, got {self.norm_timing!r}")
        if self.ratio_clip not in RATIO_CLIPS:
            raise ValueError(f"ratio_clip must be one of {RATIO_CLIPS}, got {self.ratio_clip!r}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError("gamma must be in [0, 1]")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("ema_decay must be in [0, 1)")


# -- the rules, on flattened task gradients G (T, N) ---------------------------

def htlnet_combine(G, config: GradientConfig):
    """HTLNet: returns G_c + sum_t (1 - gamma + gamma w_t) * proj(G_t), shape (N,)."""
    core = G[-1]
    core_sq = tf.reduce_sum(core * core)
    core_norm = tf.sqrt(core_sq)
    combined = core
    for t in range(G.shape[0] - 1):
        g = G[t]
        dot = tf.reduce_sum(g * core)
        # Projection only where the gradients conflict (negative dot product).
        coefficient = tf.where(dot < 0.0, config.projection_strength * dot / (core_sq + _EPS), 0.0)
        projected = g - coefficient * core
        reference = projected if config.norm_timing == "after_projection" else g
        ratio = core_norm / (tf.norm(reference) + _EPS)
        if config.ratio_clip == "upper":
            ratio = tf.minimum(ratio, config.cap)
        else:
            ratio = tf.clip_by_value(ratio, 1.0 / config.cap, config.cap)
        combined = combined + (1.0 - config.gamma + config.gamma * ratio) * projected
    return combined


def pcgrad_combine(G):
    """PCGrad with a fixed projection order (task index), for reproducibility: (N,)."""
    tasks = G.shape[0]
    combined = tf.zeros_like(G[0])
    for t in range(tasks):
        g = G[t]
        for j in range(tasks):
            if j == t:
                continue
            other = G[j]
            dot = tf.reduce_sum(g * other)
            g = g - tf.where(dot < 0.0, dot / (tf.reduce_sum(other * other) + _EPS), 0.0) * other
        combined = combined + g
    return combined


def metabalance_combine(G, norm_ema, config: GradientConfig):
    """MetaBalance with the last task as target; updates `norm_ema` (T,) in place: (N,).

    m_t <- decay * m_t + (1 - decay) * |G_t| (m_t = |G_t| on the first step);
    result G_T + sum_{t<T} (1 - gamma + gamma * m_T / m_t) G_t.

    Under a tf.distribute strategy with R replicas each replica holds the gradient
    of its share of the batch, scaled by 1/R. The norms are then replaced by R times
    the replicas' mean norm, identical on every replica, so the moving averages
    agree everywhere and keep the single-device scale; the result is linear in G
    given the shared scales, so the replicas' sum is the rule on the whole batch.
    """
    norms = tf.norm(G, axis=1)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        replicas = context.num_replicas_in_sync
        norms = context.all_reduce(tf.distribute.ReduceOp.MEAN, norms) * replicas
    decay = config.ema_decay
    initialised = tf.reduce_any(norm_ema > 0.0)
    updated = tf.where(initialised, decay * norm_ema + (1.0 - decay) * norms, norms)
    norm_ema.assign(updated)
    target = updated[-1]
    scale = (1.0 - config.gamma) + config.gamma * target / (updated[:-1] + _EPS)  # (T-1,)
    return G[-1] + tf.reduce_sum(scale[:, None] * G[:-1], axis=0)


# -- flattening sparse/dense per-task gradients --------------------------------

def _touched_rows(grads, variable):
    """Task gradients of one table on the union of touched rows.

    Returns (unique_ids (U,), blocks: T tensors of shape (U, d)).
    """
    indices = [tf.cast(g.indices, tf.int64) for g in grads if g is not None]
    unique_ids, positions = tf.unique(tf.concat(indices, axis=0))
    count = tf.shape(unique_ids)[0]
    blocks, start = [], 0
    for g in grads:
        if g is None:
            blocks.append(tf.zeros([count, variable.shape[1]], variable.dtype))
            continue
        length = tf.shape(g.indices)[0]
        blocks.append(tf.math.unsorted_segment_sum(g.values, positions[start:start + length], count))
        start = start + length
    return unique_ids, blocks


def flatten_task_gradients(per_task, variables):
    """Stacks T tasks' gradients of `variables` into G (T, N).

    Returns (G, rebuild), where rebuild(vector (N,)) gives one gradient per
    variable: IndexedSlices on the touched rows for a table whose task gradients
    are all sparse, a dense tensor otherwise.
    """
    columns, layouts = [], []
    for index, variable in enumerate(variables):
        grads = [task[index] for task in per_task]
        present = [g for g in grads if g is not None]
        if present and all(isinstance(g, tf.IndexedSlices) for g in present):
            unique_ids, blocks = _touched_rows(grads, variable)
            layouts.append((variable, unique_ids))
        else:
            blocks = [tf.zeros_like(variable) if g is None else tf.convert_to_tensor(g) for g in grads]
            layouts.append((variable, None))
        columns.append(tf.stack([tf.reshape(block, [-1]) for block in blocks]))
    G = tf.concat(columns, axis=1)

    def rebuild(vector):
        out, start = [], 0
        for (variable, unique_ids), column in zip(layouts, columns):
            size = tf.shape(column)[1]
            piece = vector[start:start + size]
            start = start + size
            if unique_ids is None:
                out.append(tf.reshape(piece, variable.shape))
            else:
                values = tf.reshape(piece, [-1, variable.shape[1]])
                out.append(tf.IndexedSlices(values, unique_ids,
                                            tf.constant([int(d) for d in variable.shape], tf.int64)))
        return out

    return G, rebuild


class GradientHandler(keras.layers.Layer):
    """Combines per-task gradients of the shared variables under one rule.

    Held by the model so that its state (MetaBalance's moving-average norms) is
    tracked, saved and distributed with the model's other variables.
    """

    def __init__(self, config: GradientConfig, num_tasks: int, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.num_tasks = num_tasks
        self.norm_ema = None
        if config.rule == "metabalance":
            # Every replica assigns the same value (see metabalance_combine).
            self.norm_ema = self.add_weight(name="norm_ema", shape=(num_tasks,),
                                            initializer="zeros", trainable=False,
                                            aggregation="mean")

    def combine(self, per_task, variables):
        """per_task: T lists of gradients (one per variable) -> one combined list."""
        G, rebuild = flatten_task_gradients(per_task, variables)
        rule = self.config.rule
        if rule == "htlnet":
            vector = htlnet_combine(G, self.config)
        elif rule == "pcgrad":
            vector = pcgrad_combine(G)
        elif rule == "metabalance":
            vector = metabalance_combine(G, self.norm_ema, self.config)
        else:
            vector = tf.reduce_sum(G, axis=0)
        return rebuild(vector)

    def get_config(self):
        return {**super().get_config(), "config": dataclasses.asdict(self.config),
                "num_tasks": self.num_tasks}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(GradientConfig(**config.pop("config")), **config)
