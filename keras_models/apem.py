"""APEM: Adaptive Pattern Extraction Multi-task (Tao, Ha et al., arXiv 2301.02494 v3).

Field embeddings pass through a DeepAuto Group Transformer (set attention with
inducing points inside groups of fields, then Squeeze-and-Excitation over
fields, stacked with residual connections); a Pattern Selector driven by
learnable (optionally sample-adaptive) task-indicator vectors picks a
representation per task; towers predict each step's conditional rate c_t, and
the marginal on the impression space is m_t = c_1 * ... * c_t.

The paper's body text was not readable: the component names are the paper's,
their internals are a reconstruction from the standard definitions (Set
Transformer, SENet/FiBiNET), with the open choices exposed as hyper-parameters.
See docs/models.md and MODELS.md §B.2.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from keras import ops

from keras_models.base import (PACKAGE, CommonHParams, Heads, MultiTaskModel, chained_heads,
                               marginal_heads)
from keras_models.layers import MLP

SELECTORS = ("attention", "gate")


@dataclasses.dataclass(frozen=True)
class APEMHParams(CommonHParams):
    """All [R] defaults from MODELS.md §B.4 unless noted."""

    num_groups: int = 2                  # contiguous groups of fields, when field_groups is empty
    field_groups: tuple = ()             # explicit groups: lists of field names covering every field
    inducing_points: int = 4
    num_heads: int = 2
    num_layers: int = 1
    se_reduction: int = 4
    layer_norm: bool = True              # LayerNorm inside set attention (a possible "modification")
    share_inducing_points: bool = False  # one set of inducing points for every group
    cross_group: bool = False            # an extra set-attention pass across all fields
    selector: str = "attention"          # "attention" pooling or per-field sigmoid "gate"
    adaptive_indicators: bool = True     # u_t + MLP_t(mean_f P) instead of a static u_t
    selector_skip: bool = True           # append flatten(P) to each task's selection
    tower_units: tuple[int, ...] = (128, 64)
    dropout: float = 0.0
    objective: str = "entire_space"
    constraint_weight: float = 0.1


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiheadAttentionBlock(keras.layers.Layer):
    """MAB(Q, K) = LN(A + relu(A W_f + b_f)), A = LN(Q + MHA(Q, K)) (Set Transformer).

    MHA has h heads of size k = d / h; head j uses columns j*k..(j+1)*k of W_q,
    W_k, W_v (d, d) and the same rows of W_o (d, d). The kernels are stored in
    keras.layers.MultiHeadAttention's shapes, (d, h, k) and (h, k, d);
    `kernel_matrix` gives their (d, d) views.
        MHA(Q, K) = sum_j softmax_rows(Q_j K_j^T / sqrt(k)) V_j W_o^j + b_o,
        Q_j = Q W_q^j + b_q^j, K_j = K W_k^j + b_k^j, V_j = K W_v^j + b_v^j.
    Two entry points compute it with plain 2-D matmuls instead of per-head
    einsums (the einsums were most of APEM's step time on CPU):
      attend(query (B, n, d), key (B, m, d)) -> (B, n, d)
      summarise(points (m, d), key (B, n, d)) -> (B, m, d), for queries that are
        weights shared by every row (ISAB's inducing points): the scores fold
        into one (d, m*h) matrix, and since each row of attention weights sums
        to 1, V_j W_o^j is applied once to the attention-weighted keys.
    tests/test_apem.py checks both against a NumPy transcription of the formula.
    """

    def __init__(self, dim: int, num_heads: int, layer_norm: bool = True, key_bias: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.layer_norm = dim, num_heads, layer_norm
        self.head_dim, self.key_bias = dim // num_heads, key_bias
        h, k = num_heads, self.head_dim
        # Kernels in keras.layers.MultiHeadAttention's shapes, so Glorot draws at its scale.
        self.kernels = {name: self.add_weight(name=f"{name}_kernel", shape=shape,
                                              initializer="glorot_uniform")
                        for name, shape in (("query", (dim, h, k)), ("key", (dim, h, k)),
                                            ("value", (dim, h, k)), ("output", (h, k, dim)))}
        self.b_query, self.b_value, self.b_output = (
            self.add_weight(name=f"{name}_bias", shape=(dim,), initializer="zeros")
            for name in ("query", "value", "output"))
        # Without effect in `summarise` (softmax drops it), so that block has none.
        self.b_key = (self.add_weight(name="key_bias", shape=(dim,), initializer="zeros")
                      if key_bias else None)
        self.feed_forward = keras.layers.Dense(dim, activation="relu")
        self.norm_attention = keras.layers.LayerNormalization() if layer_norm else None
        self.norm_output = keras.layers.LayerNormalization() if layer_norm else None

    def build(self, input_shape=None):
        for layer in (self.feed_forward, self.norm_attention, self.norm_output):
            if layer is not None:
                layer.build((None, self.dim))

    def kernel_matrix(self, name: str):
        """The (d, d) view of kernel `name` ("query", "key", "value" or "output")."""
        return ops.reshape(self.kernels[name], (self.dim, self.dim))

    def _value_output(self):
        """W_v^j W_o^j for each head j, stacked (h, d, d), and sum_j b_v^j W_o^j + b_o (d,)."""
        wv = ops.transpose(self.kernels["value"], (1, 0, 2))                    # (h, d, k)
        return (ops.matmul(wv, self.kernels["output"]),                  # (h, d, k) @ (h, k, d)
                ops.matmul(self.b_value[None], self.kernel_matrix("output"))[0] + self.b_output)

    def _finish(self, query, attended):
        a = query + attended
        if self.norm_attention is not None:
            a = self.norm_attention(a)
        out = a + self.feed_forward(a)
        return self.norm_output(out) if self.norm_output is not None else out

    def attend(self, query, key):
        """query (B, n, d), key (B, m, d) -> (B, n, d)."""
        h, k, d = self.num_heads, self.head_dim, self.dim
        n, m = query.shape[1], key.shape[1]
        key_2d = ops.reshape(key, (-1, d))
        q = ops.matmul(ops.reshape(query, (-1, d)), self.kernel_matrix("query")) + self.b_query
        q = ops.reshape(q, (-1, n, 1, h, k))
        keys = ops.matmul(key_2d, self.kernel_matrix("key"))
        keys = ops.reshape(keys if self.b_key is None else keys + self.b_key, (-1, 1, m, h, k))
        weights = ops.softmax(ops.sum(q * keys, axis=-1) / math.sqrt(k), axis=2)  # (B, n, m, h)
        value_output, bias = self._value_output()
        # Row (i, j) of `values`: key i through head j's W_v^j W_o^j. Each head's weights
        # sum to 1 over the keys, so the value and output biases add once, as `bias`.
        wvo = ops.reshape(ops.transpose(value_output, (1, 0, 2)), (d, h * d))
        values = ops.reshape(ops.matmul(key_2d, wvo), (-1, m * h, d))            # (B, m*h, d)
        weights = ops.reshape(weights, (-1, n, m * h, 1))
        attended = ops.sum(weights * values[:, None], axis=2) + bias                # (B, n, d)
        return self._finish(query, attended)

    def summarise(self, points, key):
        """points (m, d) shared by every row, key (B, n, d) -> (B, m, d)."""
        h, k, d = self.num_heads, self.head_dim, self.dim
        m, n = points.shape[0], key.shape[1]
        q = ops.reshape(ops.matmul(points, self.kernel_matrix("query")) + self.b_query, (m, h, k))
        # q_i^j . (x W_k^j + b_k^j): the b_k term is the same for every key, so softmax drops it.
        folded = ops.einsum("dhk,mhk->dmh", self.kernels["key"], q) / math.sqrt(k)
        scores = ops.matmul(ops.reshape(key, (-1, d)), ops.reshape(folded, (d, m * h)))
        weights = ops.softmax(ops.reshape(scores, (-1, n, m * h)), axis=1)       # over the keys
        pooled = ops.sum(weights[..., None] * key[:, :, None, :], axis=1)        # (B, m*h, d)
        value_output, bias = self._value_output()
        attended = ops.matmul(ops.reshape(pooled, (-1, h * d)),
                              ops.reshape(value_output, (h * d, d))) + bias
        return self._finish(points[None], ops.reshape(attended, (-1, m, d)))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads,
                "layer_norm": self.layer_norm, "key_bias": self.key_bias}


@keras.saving.register_keras_serializable(package=PACKAGE)
class InducedSetAttention(keras.layers.Layer):
    """ISAB: H = MAB(I, X) with m learnable inducing points, Y = MAB(X, H).

    Cost O(n m) instead of O(n^2). Call: X (B, n, d) -> (B, n, d).
    Pass `inducing` to share inducing points between blocks.
    """

    def __init__(self, dim, num_heads, num_inducing, layer_norm=True, inducing=None, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.num_inducing = dim, num_heads, num_inducing
        self.layer_norm = layer_norm
        self.inducing = inducing if inducing is not None else self.add_weight(
            name="inducing_points", shape=(num_inducing, dim), initializer="glorot_uniform")
        self.summarise = MultiheadAttentionBlock(dim, num_heads, layer_norm, key_bias=False,
                                                 name="summarise")
        self.broadcast = MultiheadAttentionBlock(dim, num_heads, layer_norm, name="broadcast")

    def build(self, input_shape=None):
        self.summarise.build()
        self.broadcast.build()

    def call(self, x):
        return self.broadcast.attend(x, self.summarise.summarise(self.inducing, x))


@keras.saving.register_keras_serializable(package=PACKAGE)
class SqueezeExcitation(keras.layers.Layer):
    """Field re-weighting (FiBiNET): a = sigmoid(W2 relu(W1 mean_d(Y))), out = a * Y.

    Call: Y (B, F, d) -> (out (B, F, d), gates (B, F) in (0, 1)).
    """

    def __init__(self, num_fields: int, reduction: int, **kwargs):
        super().__init__(**kwargs)
        self.num_fields, self.reduction = num_fields, reduction
        self.squeeze = keras.layers.Dense(max(1, num_fields // reduction), activation="relu")
        self.excite = keras.layers.Dense(num_fields, activation="sigmoid")

    def call(self, y):
        gates = self.excite(self.squeeze(ops.mean(y, axis=-1)))
        return gates[..., None] * y, gates

    def get_config(self):
        return {**super().get_config(), "num_fields": self.num_fields, "reduction": self.reduction}


def resolve_groups(field_names, num_groups: int, field_groups) -> list[list[int]]:
    """Field indices per group: explicit names, or `num_groups` contiguous chunks."""
    if field_groups:
        index = {name: i for i, name in enumerate(field_names)}
        groups = []
        for group in field_groups:
            unknown = [name for name in group if name not in index]
            if unknown:
                raise ValueError(f"field_groups names unknown field(s) {unknown}; "
                                 f"fields are {list(field_names)}")
            groups.append([index[name] for name in group])
        covered = sorted(i for g in groups for i in g)
        if covered != list(range(len(field_names))):
            raise ValueError("field_groups must name every field exactly once")
        return groups
    chunks = np.array_split(np.arange(len(field_names)), min(num_groups, len(field_names)))
    return [chunk.tolist() for chunk in chunks]


@keras.saving.register_keras_serializable(package=PACKAGE)
class DeepAutoGroupTransformer(keras.layers.Layer):
    """N_L layers of: set attention inside each field group -> SE over fields -> residual.

    Call: X (B, F, d) -> P (B, F, d); `last_gates` holds the last layer's SE gates (B, F).
    """

    def __init__(self, groups, dim, num_heads, num_inducing, num_layers, se_reduction,
                 layer_norm=True, share_inducing_points=False, cross_group=False, **kwargs):
        super().__init__(**kwargs)
        self.groups = [list(g) for g in groups]
        self.dim, self.num_heads, self.num_inducing = dim, num_heads, num_inducing
        self.num_layers, self.se_reduction = num_layers, se_reduction
        self.layer_norm, self.share_inducing_points = layer_norm, share_inducing_points
        self.cross_group = cross_group
        num_fields = sum(len(g) for g in self.groups)
        order = [i for g in self.groups for i in g]
        # grouped order -> field order; None when the groups are already in field order
        self._restore = (None if order == list(range(num_fields))
                         else np.argsort(order).astype("int32"))
        shared = (self.add_weight(name="shared_inducing_points", shape=(num_inducing, dim),
                                  initializer="glorot_uniform") if share_inducing_points else None)
        self.group_blocks = [[InducedSetAttention(dim, num_heads, num_inducing, layer_norm, shared,
                                                  name=f"layer{l}_group{g}")
                              for g in range(len(self.groups))] for l in range(num_layers)]
        self.cross_blocks = [InducedSetAttention(dim, num_heads, num_inducing, layer_norm,
                                                 name=f"layer{l}_cross")
                             for l in range(num_layers)] if cross_group else []
        self.excitations = [SqueezeExcitation(num_fields, se_reduction, name=f"layer{l}_se")
                            for l in range(num_layers)]

    def call(self, x, return_gates=False):
        gates = None
        for layer in range(self.num_layers):
            parts = [self.group_blocks[layer][g](self._group_fields(x, group))
                     for g, group in enumerate(self.groups)]
            y = ops.concatenate(parts, axis=1)
            if self._restore is not None:
                y = ops.take(y, self._restore, axis=1)                   # field order
            if self.cross_blocks:
                y = self.cross_blocks[layer](y)
            y, gates = self.excitations[layer](y)
            x = x + y
        return (x, gates) if return_gates else x

    @staticmethod
    def _group_fields(x, group):
        """x (B, F, d) -> (B, len(group), d); a slice when the group is a run of fields."""
        if group == list(range(group[0], group[0] + len(group))):
            return x[:, group[0]:group[0] + len(group)]
        return ops.take(x, group, axis=1)

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "dim": self.dim,
                "num_heads": self.num_heads, "num_inducing": self.num_inducing,
                "num_layers": self.num_layers, "se_reduction": self.se_reduction,
                "layer_norm": self.layer_norm, "share_inducing_points": self.share_inducing_points,
                "cross_group": self.cross_group}


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatternSelector(keras.layers.Layer):
    """Per-task selection from the pattern tensor P, driven by task-indicator vectors.

    attention: alpha_t = softmax_f((W_Q u_t) . (W_K P_f) / sqrt(d/H)) per head,
               r_t = concat_h sum_f alpha_t W_V P_f                     (B, d)
    gate:      g_t = sigmoid(u_t . W P_f), r_t = flatten(g_t * P)        (B, F*d)
    With `adaptive`, u_t(x) = u_t + MLP_t(mean_f P). With `skip`, flatten(P) is
    appended. Call: P (B, F, d) -> list of T tensors; `weights(P)` returns the
    selection weights (B, T, H, F) for attention or (B, T, F) for gate.
    """

    def __init__(self, num_tasks, dim, num_fields, num_heads=2, mode="attention", adaptive=True,
                 skip=True, **kwargs):
        super().__init__(**kwargs)
        if mode not in SELECTORS:
            raise ValueError(f"selector must be one of {SELECTORS}, got {mode!r}")
        self.num_tasks, self.dim, self.num_fields = num_tasks, dim, num_fields
        self.num_heads, self.mode, self.adaptive, self.skip = num_heads, mode, adaptive, skip
        self.indicators = self.add_weight(name="task_indicators", shape=(num_tasks, dim),
                                          initializer=keras.initializers.RandomNormal(stddev=0.1))
        self.shifts = [MLP((dim,), name=f"adapt_{t}") for t in range(num_tasks)] if adaptive else []
        self.shift_out = [keras.layers.Dense(dim, name=f"adapt_out_{t}")
                          for t in range(num_tasks)] if adaptive else []
        self.key = keras.layers.Dense(dim, use_bias=False, name="key")
        if mode == "attention":
            self.query = keras.layers.Dense(dim, use_bias=False, name="query")
            self.value = keras.layers.Dense(dim, use_bias=False, name="value")

    def _indicators(self, p):
        batch = ops.shape(p)[0]
        base = ops.broadcast_to(self.indicators[None], (batch, self.num_tasks, self.dim))
        if not self.adaptive:
            return base                                                   # (B, T, d)
        summary = ops.mean(p, axis=1)                                     # (B, d)
        shift = ops.stack([out(mlp(summary)) for mlp, out in zip(self.shifts, self.shift_out)], 1)
        return base + shift

    def weights_and_values(self, p):
        u = self._indicators(p)                                           # (B, T, d)
        keys = self.key(p)                                                # (B, F, d)
        if self.mode == "gate":
            return ops.sigmoid(ops.einsum("btd,bfd->btf", u, keys)), None
        h, k = self.num_heads, self.dim // self.num_heads
        q = ops.reshape(self.query(u), (-1, self.num_tasks, h, k))
        keys = ops.reshape(keys, (-1, self.num_fields, h, k))
        values = ops.reshape(self.value(p), (-1, self.num_fields, h, k))
        keys = ops.transpose(keys, (0, 2, 1, 3))[:, None]                 # (B, 1, H, F, k)
        scores = ops.sum(q[:, :, :, None] * keys, axis=-1) / math.sqrt(k)
        return ops.softmax(scores, axis=-1), values                      # (B, T, H, F)

    def call(self, p):
        weights, values = self.weights_and_values(p)
        flat = ops.reshape(p, (-1, self.num_fields * self.dim))
        if self.mode == "gate":   # g_t * P for all tasks at once: (B, T, F*d)
            chosen = ops.reshape(weights[..., None] * p[:, None],
                                 (-1, self.num_tasks, self.num_fields * self.dim))
        else:   # sum_f alpha_{t,h,f} V_{f,h}, all tasks at once: (B, T, d)
            by_head = ops.transpose(values, (0, 2, 1, 3))[:, None]             # (B, 1, H, F, k)
            chosen = ops.reshape(ops.sum(weights[..., None] * by_head, axis=3),
                                 (-1, self.num_tasks, self.dim))
        return [ops.concatenate([chosen[:, t], flat], axis=-1) if self.skip else chosen[:, t]
                for t in range(self.num_tasks)]

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks, "dim": self.dim,
                "num_fields": self.num_fields, "num_heads": self.num_heads, "mode": self.mode,
                "adaptive": self.adaptive, "skip": self.skip}


@keras.saving.register_keras_serializable(package=PACKAGE)
class APEM(MultiTaskModel):
    """Embeddings -> DGT -> Pattern Selector -> towers; m_t = prod_{j<=t} c_j.

    With objective "constrained" the towers predict marginals directly and the
    penalty keeps m_t <= m_{t-1} (MODELS.md §B.1 (3)). A continuous core target,
    when the chain has one, gets its own indicator and a linear tower.
    """

    hparams_class = APEMHParams
    xla_on_cpu = True    # its many small attention ops fuse well: 1.5x faster steps on CPU

    def __init__(self, input_layout, task_layout, hparams=None, **kwargs):
        super().__init__(input_layout, task_layout, hparams, **kwargs)
        hp = self.hparams
        fields = self.input_layout.field_names
        if hp.embedding_dim % hp.num_heads:
            raise ValueError("embedding_dim must be divisible by num_heads")
        groups = resolve_groups(fields, hp.num_groups, hp.field_groups)
        self.transformer = DeepAutoGroupTransformer(
            groups, hp.embedding_dim, hp.num_heads, hp.inducing_points, hp.num_layers,
            hp.se_reduction, hp.layer_norm, hp.share_inducing_points, hp.cross_group, name="dgt")
        labels = self.task_layout.label_names
        self.selector = PatternSelector(len(labels), hp.embedding_dim, len(fields), hp.num_heads,
                                        hp.selector, hp.adaptive_indicators, hp.selector_skip,
                                        name="pattern_selector")
        self.towers = [MLP(hp.tower_units, hp.dropout, name=f"tower_{l}") for l in labels]
        self.heads = self.output_layers()

    def patterns(self, inputs):
        """P (B, F, d) and the last SE gates (B, F), from raw model inputs."""
        return self.transformer(self.crossed(self.embedding(inputs)), return_gates=True)

    def compute_heads(self, fields, training=False) -> Heads:
        patterns = self.transformer(fields)
        selections = self.selector(patterns)
        logits = [head(tower(r, training=training))
                  for r, tower, head in zip(selections, self.towers, self.heads)]
        if self.objective == "constrained":
            return marginal_heads(self.task_layout, logits)
        return chained_heads(self.task_layout, logits)
