"""The base class every multi-task model derives from.

Subclasses build their layers (with one output layer per label from
`output_layers`) and implement `compute_heads`, which returns the marginal
probability of each binary step and, where the chain has one, the core tower's
raw output. The base class embeds
the inputs (FieldEmbedding, shared by every task), optionally crosses them
(keras_models.feature_cross, hyper-parameter `feature_cross_layers`), and hands
the fields (batch, F, d) to `compute_heads`; it turns heads into the output contract (see
`layout`), owns the losses and the training step, and tracks one loss per task.

Objectives for the binary steps (`objective`; MODELS.md §B.1):
  entire_space        mean BCE(y_s, m_s) over all rows, m_s the marginal (default)
  masked_conditional  BCE(y_s, c_s) over the rows where step s-1 happened, c_s the
                      conditional rate (needs a model that predicts conditionals)
  constrained         entire_space plus a penalty
                      lambda * mean(sum_s max(m_s - m_{s-1}, 0)), reported as "constraint"
The core target's loss and its prediction E[y | x] belong to the core head
(keras_models.core_heads, `TaskLayout.core_head`).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_models.core_heads import make_core_head, masked_mean
from keras_models.feature_cross import make_field_cross
from keras_models.gradients import GradientConfig, GradientHandler
from keras_models.input_options import steady_input
from keras_models.layers import PACKAGE, FieldEmbedding
from keras_models.layout import (PROBABILITY_EPSILON, SCORE_KEY, InputLayout, TaskLayout,
                                 conditional_key, pred_key, prob_key, raw_key)
from keras_models.recalibration import Recalibration, RecalibrationLayer, fit_recalibration

_EPSILON = 1e-7
GRADIENT_SCOPES = ("auto", "embeddings", "shared")


@dataclasses.dataclass(frozen=True)
class CommonHParams:
    """Hyper-parameters every model has; model classes extend this dataclass.

    The gradient_* fields select how per-task gradients are combined (see
    keras_models.gradients) and on which variables (`gradient_scope`):
      embeddings  the field embedding tables only (HTLNet's regime, MODELS.md §A.6)
      shared      every variable more than one task's loss reaches (the embedding
                  tables, a shared bottom, experts, APEM's transformer), the shared
                  parameters PCGrad and MetaBalance are defined on
      auto        embeddings for the htlnet rule, shared for pcgrad and metabalance

    prior_bias: start each output layer's bias at the training labels' prior
      (see MultiTaskModel.adapt_to_labels) instead of 0 [R]; measured in
      docs/models.md, "Output levels".
    recalibrate: after training, match each output's mean prediction to its mean
      label on training rows (keras_models.recalibration) [R].
    jit_compile: whether training and prediction steps run compiled by XLA: "on",
      "off" or "auto" (XLA for models that are faster with it on CPU too, i.e.
      `xla_on_cpu`, when gradient_rule is "none"; otherwise Keras' rule, XLA on
      GPUs and TPUs only). See keras_models.registry.jit_compile_setting.
    feature_cross_layers: N DCN-v2 cross layers (keras-rs FeatureCross) over the
      concatenated field embeddings before the model's own layers; 0 (default)
      for none. See keras_models.feature_cross.
    feature_cross_projection_dim: 0 for full-rank cross kernels (F*d, F*d), r > 0
      for low-rank ones (F*d, r) x (r, F*d).
    """

    embedding_dim: int = 16
    learning_rate: float = 1e-3
    gradient_rule: str = "none"
    gradient_scope: str = "auto"
    gradient_gamma: float = 0.1
    gradient_cap: float = 10.0
    projection_strength: float = 1.0
    norm_timing: str = "after_projection"
    ratio_clip: str = "upper"
    ema_decay: float = 0.9
    prior_bias: bool = True
    recalibrate: bool = True
    jit_compile: str = "auto"
    feature_cross_layers: int = 0
    feature_cross_projection_dim: int = 0

    @classmethod
    def from_dict(cls, values):
        return hparams_from_dict(cls, values)

    def gradient_config(self) -> GradientConfig:
        return GradientConfig(rule=self.gradient_rule, gamma=self.gradient_gamma,
                              cap=self.gradient_cap, projection_strength=self.projection_strength,
                              norm_timing=self.norm_timing, ratio_clip=self.ratio_clip,
                              ema_decay=self.ema_decay)

    @property
    def resolved_gradient_scope(self) -> str:
        if self.gradient_scope not in GRADIENT_SCOPES:
            raise ValueError(f"gradient_scope must be one of {GRADIENT_SCOPES}, "
                             f"got {self.gradient_scope!r}")
        if self.gradient_scope != "auto":
            return self.gradient_scope
        return "embeddings" if self.gradient_rule in ("none", "htlnet") else "shared"


@dataclasses.dataclass(frozen=True)
class Heads:
    """What a model predicts before the output contract is applied.

    probs: step -> (batch,) marginal probability on the impression space.
    core: (batch, units) raw output of the core tower, or None.
    conditionals: step -> (batch,) P(step | previous step), for models that
      factorise the chain; None otherwise.
    """

    probs: Mapping[str, object]
    core: object = None
    conditionals: Mapping[str, object] | None = None


def marginal_heads(task_layout: TaskLayout, outputs) -> Heads:
    """One output layer's result per label: (batch, 1) logits of sigmoid marginals for
    the steps, then the core tower's (batch, units)."""
    steps = task_layout.steps
    probs = {step: ops.sigmoid(ops.squeeze(z, -1)) for step, z in zip(steps, outputs)}
    return Heads(probs, outputs[len(steps)] if task_layout.core_target else None)


def chained_heads(task_layout: TaskLayout, outputs) -> Heads:
    """As marginal_heads, but the step logits give conditional rates c_t = sigmoid(z_t)
    and the marginals on the impression space are m_t = c_1 * ... * c_t."""
    steps = task_layout.steps
    conditionals = {step: ops.sigmoid(ops.squeeze(logit, -1))
                    for step, logit in zip(steps, outputs)}
    return Heads(chain_marginals(steps, conditionals),
                 outputs[len(steps)] if task_layout.core_target else None, conditionals)


def chain_marginals(steps, conditionals: Mapping[str, object]) -> dict:
    """step -> (B,) marginal m_t = c_1 * ... * c_t from the conditionals c (B,) each."""
    marginals, running = {}, None
    for step in steps:
        running = conditionals[step] if running is None else running * conditionals[step]
        marginals[step] = running
    return marginals


def safe_probability(p):
    """p squashed affinely into [eps, 1 - eps]: never exactly 0 or 1, gradient kept."""
    return PROBABILITY_EPSILON + (1.0 - 2.0 * PROBABILITY_EPSILON) * p


class MultiTaskModel(keras.Model):
    """Base model: contract outputs, per-task losses, the training step."""

    hparams_class = None  # set by subclasses to their typed hyper-parameter dataclass
    requires_core_target = False  # True for models that need a continuous last task
    xla_on_cpu = False    # True: jit_compile "auto" trains under XLA on CPUs too
    OBJECTIVES = ("entire_space", "masked_conditional", "constrained")

    def __init__(self, input_layout, task_layout, hparams=None, **kwargs):
        super().__init__(**kwargs)
        self.input_layout = (input_layout if isinstance(input_layout, InputLayout)
                             else InputLayout.from_config(input_layout))
        self.task_layout = (task_layout if isinstance(task_layout, TaskLayout)
                            else TaskLayout.from_config(task_layout))
        self.hparams = self.hparams_class.from_dict(hparams or {})
        self.embedding = FieldEmbedding(self.input_layout.to_config(), self.hparams.embedding_dim,
                                        name="field_embedding")
        self.field_cross = make_field_cross(self.hparams.feature_cross_layers,
                                            self.hparams.feature_cross_projection_dim)
        tasks = self.task_layout
        self.objective = getattr(self.hparams, "objective", "entire_space")
        self.constraint_weight = getattr(self.hparams, "constraint_weight", 0.0)
        if self.objective not in self.OBJECTIVES:
            raise ValueError(f"objective must be one of {self.OBJECTIVES}, got {self.objective!r}")
        self.core_head = (make_core_head(tasks.core_head, tasks.target_transform)
                          if tasks.core_target else None)
        self.recalibration = (RecalibrationLayer(tasks.steps, name="recalibration")
                              if self.hparams.recalibrate else None)
        self.gradient_scope = self.hparams.resolved_gradient_scope
        self.gradient_handler = GradientHandler(self.hparams.gradient_config(),
                                                num_tasks=len(tasks.label_names),
                                                name="gradient_handler")
        self.loss_trackers = {label: keras.metrics.Mean(name=f"{label}_loss")
                              for label in tasks.label_names}
        self.total_loss_tracker = keras.metrics.Mean(name="loss")

    # -- to be implemented by subclasses ---------------------------------------
    def compute_heads(self, fields, training=False) -> Heads:
        """fields: (batch, F, d) embedded inputs -> Heads."""
        raise NotImplementedError

    def output_layers(self) -> list:
        """One linear output layer per label: 1 unit for a step, the core head's units
        for the core target."""
        return [keras.layers.Dense(self.core_head.units if label == self.task_layout.core_target
                                   else 1, name=f"head_{label}")
                for label in self.task_layout.label_names]

    # -- outputs ---------------------------------------------------------------
    def call(self, inputs, training=False):
        return self._outputs(self.compute_heads(self.crossed(self.embedding(inputs)),
                                                training=training))

    def crossed(self, fields):
        """fields (B, F, d) from the embedding -> (B, F, d) the model's layers read: the
        DCN-v2 crosses of the fields with `feature_cross_layers` > 0, else the fields."""
        return fields if self.field_cross is None else self.field_cross(fields)

    def _outputs(self, heads: Heads) -> dict:
        tasks = self.task_layout
        heads = self._recalibrated(heads)
        outputs = {prob_key(step): safe_probability(heads.probs[step]) for step in tasks.steps}
        if heads.conditionals is not None:
            outputs.update({conditional_key(s): heads.conditionals[s] for s in tasks.steps})
        if tasks.core_target:
            outputs[raw_key(tasks.core_target)] = heads.core
            mean = self.core_head.mean(heads.core, outputs[prob_key(tasks.steps[-1])])
            if self.recalibration is not None:
                mean = mean * self.recalibration.core_scale
            outputs[pred_key(tasks.core_target)] = mean
            outputs[SCORE_KEY] = outputs[pred_key(tasks.core_target)]
        else:
            outputs[SCORE_KEY] = outputs[prob_key(tasks.steps[-1])]
        return outputs

    def _recalibrated(self, heads: Heads) -> Heads:
        if self.recalibration is None:
            return heads
        if heads.conditionals is not None:
            conditionals = self.recalibration.shift(heads.conditionals)
            return Heads(chain_marginals(self.task_layout.steps, conditionals), heads.core,
                         conditionals)
        return Heads(self.recalibration.shift(heads.probs), heads.core)

    def recalibrate(self, features, labels, batch_size: int = 8192) -> Recalibration | None:
        """Fits and keeps the mean recalibration (keras_models.recalibration) on rows
        of the training split; returns the fitted values, or None when the model was
        built with recalibrate off.

        features: input name -> (n, ...) arrays as the model takes them; labels:
        label name -> (n,) or (n, 1) arrays of the same rows. The core target gets a scale only under a head that
        predicts a mean (decomposition, ziln).
        """
        if self.recalibration is None:
            return None
        tasks = self.task_layout
        self.recalibration.reset()
        outputs = self.predict(features, batch_size=batch_size, verbose=0)
        chained = conditional_key(tasks.steps[0]) in outputs
        probs = [outputs[conditional_key(s)] if chained
                 else (outputs[prob_key(s)] - PROBABILITY_EPSILON) / (1 - 2 * PROBABILITY_EPSILON)
                 for s in tasks.steps]
        core_mean = core_labels = None
        if tasks.core_target and tasks.core_head != "regression":
            raw = outputs[raw_key(tasks.core_target)]
            core_labels = np.asarray(labels[tasks.core_target], np.float64).ravel()

            def core_mean(last):
                return np.asarray(self.core_head.mean(
                    raw, safe_probability(np.asarray(last, "float32"))))

        values = fit_recalibration(probs, [np.asarray(labels[s]).ravel() for s in tasks.steps],
                                   chained, core_mean, core_labels)
        self.recalibration.assign(values)
        return values

    @property
    def shared_variables(self):
        """The field embedding tables: the variables gradient scope "embeddings" adjusts.

        The optional feature crosses (`field_cross`) are reached by every task's loss
        too; scope "embeddings" gives them the summed gradient, scope "shared" finds
        them among the variables it adjusts."""
        return self.embedding.trainable_variables

    # -- losses and training ---------------------------------------------------
    def task_losses(self, labels, outputs) -> dict:
        """Per-task scalar losses keyed by label name, plus "constraint" when constrained."""
        losses = {}
        steps = self.task_layout.steps
        for i, step in enumerate(steps):
            y = ops.cast(ops.reshape(labels[step], (-1,)), "float32")
            if self.objective == "masked_conditional":
                if conditional_key(step) not in outputs:
                    raise ValueError(f"{type(self).__name__} predicts no conditional rates; "
                                     "objective masked_conditional needs them")
                per_row = _binary_cross_entropy(y, outputs[conditional_key(step)])
                if i == 0:
                    losses[step] = ops.mean(per_row)
                else:
                    mask = ops.cast(ops.reshape(labels[steps[i - 1]], (-1,)), "float32")
                    losses[step] = masked_mean(per_row, mask)
            else:
                losses[step] = ops.mean(_binary_cross_entropy(y, outputs[prob_key(step)]))
        if self.objective == "constrained" and len(steps) > 1:
            excess = [ops.relu(outputs[prob_key(b)] - outputs[prob_key(a)])
                      for a, b in zip(steps, steps[1:])]
            losses["constraint"] = self.constraint_weight * ops.mean(ops.sum(ops.stack(excess), 0))
        target = self.task_layout.core_target
        if target:
            condition = ops.cast(ops.reshape(labels[steps[-1]], (-1,)), "float32")
            losses[target] = self.core_head.loss(outputs[raw_key(target)],
                                                 ops.reshape(labels[target], (-1,)), condition)
        return losses

    def training_losses(self, labels, outputs) -> dict:
        """task_losses plus "regularization" (weight regularisers), evaluated now.

        Regularisers are read here, inside the training tape, so they are one
        more non-task term: under a gradient rule they pass unadjusted.
        """
        losses = self.task_losses(labels, outputs)
        if self.losses:
            losses["regularization"] = ops.sum(ops.stack(self.losses))
        return losses

    def _record(self, losses, total):
        for name, value in losses.items():
            if name in self.loss_trackers:
                self.loss_trackers[name].update_state(value)
        self.total_loss_tracker.update_state(total)
        logs = {m.name: m.result() for m in self.metrics}
        if _is_multi_worker(tf.distribute.get_strategy()):
            # Keras (3.15) averages the replicas' logs under MultiWorkerMirroredStrategy
            # with strategy.reduce(..., axis=0), which needs rank 1: shape (1,) each.
            logs = {name: ops.reshape(value, (1,)) for name, value in logs.items()}
        return logs

    def train_step(self, data):
        features, labels = data[0], data[1]
        # Under a tf.distribute strategy each replica sees a slice of the global
        # batch and the replicas' gradients are summed, so losses are divided by
        # the replica count (as Keras' own compute_loss does).
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape(persistent=True) as tape:
            fields = self.embedding(features)                              # (B, F, d)
            outputs = self._outputs(self.compute_heads(self.crossed(fields), training=True))
            losses = self.training_losses(labels, outputs)
            total = ops.sum(ops.stack(list(losses.values())))
            scaled = {name: value / replicas for name, value in losses.items()}
            scaled_total = total / replicas
        gradients = self.compute_gradients(tape, fields, scaled, scaled_total)
        del tape
        self.optimizer.apply(gradients, self.trainable_variables)
        return self._record(losses, total)

    def compute_gradients(self, tape, fields, losses, total):
        """Gradients for `self.trainable_variables` under the model's gradient rule.

        Rule "none": the gradient of the summed loss, one backward pass.

        Scope "shared": one backward pass per task over every variable; the
        variables that two or more tasks reach get the rule, the others the sum.

        Scope "embeddings": one backward pass per task to the embedded fields
        (B, F, d) and the non-shared variables (the towers are task-specific, so
        these passes together cost about one full backward pass). Each task's
        gradient of the shared embedding variables then comes from a cheap
        backward pass through the embedding layer alone, and the rule combines
        them. Terms that are not tasks (penalties, regularisation) get one plain
        pass over every variable and are added unadjusted. The non-shared
        variables thus get the gradient of the summed loss.
        """
        if self.hparams.gradient_rule == "none":
            return tape.gradient(total, self.trainable_variables)
        if self.gradient_scope == "shared":
            return self._shared_scope_gradients(tape, losses)
        shared = list(self.shared_variables)
        shared_ids = {id(v) for v in shared}
        others = [v for v in self.trainable_variables if id(v) not in shared_ids]
        tasks = self.task_layout.label_names
        summed = [None] * len(others)
        field_grads = []
        for name in tasks:
            grads = tape.gradient(losses[name], [fields] + others)
            field_grads.append(grads[0])
            summed = [_add_gradients(g, s) for g, s in zip(grads[1:], summed)]
        # Each task's gradient of the shared variables: a backward pass through the
        # embedding layer alone, from that task's gradient of the embedded fields.
        combined = self.gradient_handler.combine(
            [[None] * len(shared) if g is None else
             tape.gradient(fields, shared, output_gradients=g) for g in field_grads], shared)
        for name in [n for n in losses if n not in tasks]:  # penalties: their plain gradient
            grads = tape.gradient(losses[name], others + shared)
            summed = [_add_gradients(g, s) for g, s in zip(grads[:len(others)], summed)]
            combined = [_add_gradients(c, g) for c, g in zip(combined, grads[len(others):])]
        by_variable = dict(zip(map(id, others), summed))
        by_variable.update(zip(map(id, shared), combined))
        return [by_variable[id(v)] for v in self.trainable_variables]

    def _shared_scope_gradients(self, tape, losses):
        """The rule on every variable that more than one task's loss reaches."""
        variables = list(self.trainable_variables)
        tasks = self.task_layout.label_names
        per_task = [tape.gradient(losses[name], variables) for name in tasks]
        shared = _reached_by_several(per_task)
        combined = self.gradient_handler.combine([[grads[i] for i in shared] for grads in per_task],
                                                 [variables[i] for i in shared])
        result = [None] * len(variables)
        for index, gradient in zip(shared, combined):
            result[index] = gradient
        for i in set(range(len(variables))) - set(shared):
            for grads in per_task:
                result[i] = _add_gradients(result[i], grads[i])
        for name in [n for n in losses if n not in tasks]:  # penalties: their plain gradient
            result = [_add_gradients(r, g) for r, g in zip(result, tape.gradient(losses[name],
                                                                                  variables))]
        return result

    def shared_scope_variables(self, data) -> list:
        """The variables scope "shared" applies the rule to, for one (features, labels) batch."""
        features, labels = data
        with tf.GradientTape(persistent=True) as tape:
            outputs = self(features, training=True)
            losses = self.task_losses(labels, outputs)
        per_task = [tape.gradient(losses[name], self.trainable_variables)
                    for name in self.task_layout.label_names]
        del tape
        return [self.trainable_variables[i] for i in _reached_by_several(per_task)]

    def fit(self, x=None, y=None, *args, validation_data=None, **kwargs):
        """keras.Model.fit with tf.data autotuning off for dataset inputs (see
        keras_models.input_options: it made epochs end on a fixed schedule)."""
        return super().fit(steady_input(x), y, *args,
                           validation_data=steady_input(validation_data), **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        return super().evaluate(steady_input(x), *args, **kwargs)

    def test_step(self, data):
        features, labels = data[0], data[1]
        outputs = self(features, training=False)
        losses = self.task_losses(labels, outputs)
        return self._record(losses, ops.sum(ops.stack(list(losses.values()))))

    @property
    def metrics(self):
        return [self.total_loss_tracker, *self.loss_trackers.values()]

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras' hook before fit/evaluate under a strategy, made multi-worker safe.

        Keras 3.15 averages the first distributed batch over all replicas to build
        the model symbolically; under MultiWorkerMirroredStrategy that is a
        cross-worker all-reduce of the features, which fails. The model is
        already built (see `build`), so one replica's batch serves as well.
        """
        strategy = self._distribute_strategy
        if iterator is not None and strategy is not None and _is_multi_worker(strategy):
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda x: strategy.experimental_local_results(x)[0], next(batches))
                break
            iterator = None
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def build(self, input_shape=None):
        """Creates every variable by calling the model on a 2-row dummy batch.

        Sub-layers create variables lazily on first call; under a tf.distribute
        strategy that first call would happen inside each replica. Building here,
        in the caller's strategy scope, creates them once, mirrored. The input
        layout fixes all shapes, so `input_shape` is not needed.
        """
        self.built = True  # set first: the dummy call below must not re-enter build
        self(self._dummy_batch(), training=False)

    def _dummy_batch(self) -> dict:
        """Two rows of zeros in every input, the shapes the input layout fixes."""
        dummy = {name: np.zeros((2,), "int64") for name in self.input_layout.categorical}
        dummy.update({name: np.zeros((2,), "float32") for name in self.input_layout.numeric})
        return dummy

    def training_callbacks(self) -> list:
        """Callbacks the model needs during fit (for example a temperature schedule)."""
        return []

    def step_logits_are_conditional(self) -> bool:
        """Whether the step output layers give logits of P(step | previous step)
        (chained_heads) rather than of the marginals (marginal_heads): read from the
        outputs of a forward pass, which hold the conditionals only in the first case."""
        outputs = self(self._dummy_batch(), training=False)
        return conditional_key(self.task_layout.steps[0]) in outputs

    def adapt_to_labels(self, labels: Mapping[str, object]) -> None:
        """Reads what the model fixes from training labels before `fit`.

        The core head's scales (adapt_target) and, with hparams.prior_bias, each
        output layer's starting bias: the logit of the step's training rate
        (conditional on the previous step for chained models), and for the core
        head its own prior (core_heads). A zero bias starts a rare step (1 %
        converts) at P = 0.5 and spends the first updates walking the level down;
        the levels themselves are set after training by `recalibrate`.
        labels: label name -> (n,) training labels of the same n rows.
        """
        tasks = self.task_layout
        columns = {name: np.asarray(labels[name], np.float64).ravel() for name in tasks.label_names}
        if tasks.core_target:
            self.adapt_target(columns[tasks.core_target], columns[tasks.steps[-1]])
        if not self.hparams.prior_bias:
            return
        rates = step_rates([columns[step] for step in tasks.steps],
                           conditional=self.step_logits_are_conditional())
        biases = [np.array([_logit(rate)]) for rate in rates]
        if tasks.core_target:
            biases.append(self.core_head.initial_bias(columns[tasks.core_target],
                                                      columns[tasks.steps[-1]]))
        for head, bias in zip(self.heads, biases):
            if bias is not None:
                head.bias.assign(np.asarray(bias, "float32"))

    def adapt_target(self, values, last_step=None) -> None:
        """Sets the core head's fixed scales from training labels.

        values: (n,) core-target labels; last_step: (n,) 0/1 labels of the last
        binary step on the same rows (None: rows with a positive value stand in).
        """
        if self.core_head is not None:
            self.core_head.adapt(values, last_step)

    def get_config(self):
        return {**super().get_config(), "input_layout": self.input_layout.to_config(),
                "task_layout": self.task_layout.to_config(),
                "hparams": dataclasses.asdict(self.hparams)}


def _is_multi_worker(strategy) -> bool:
    """The condition under which Keras takes its multi-worker reduction path:
    MultiWorkerMirroredStrategy with more than one worker in TF_CONFIG."""
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())


def step_rates(step_labels, conditional: bool) -> list[float]:
    """Training rate of each step: its mean, or with `conditional` its mean on the
    rows where the previous step happened (the first step's mean for step 1).

    step_labels: one (n,) 0/1 array per step, in chain order. A step with no rows
    to average over gets 0.5.
    """
    rates, previous = [], None
    for y in step_labels:
        rows = y if previous is None or not conditional else y[previous == 1]
        rates.append(float(rows.mean()) if rows.size else 0.5)
        previous = y
    return rates


_PRIOR_CLIP = 1e-4


def _logit(rate: float) -> float:
    rate = min(max(rate, _PRIOR_CLIP), 1 - _PRIOR_CLIP)
    return float(np.log(rate / (1 - rate)))


def _reached_by_several(per_task) -> list[int]:
    """Indices of the variables whose gradient is not None for two or more tasks.

    per_task: T lists of gradients, one per variable. Which variables a loss
    reaches is known when the step is traced: one outside its graph gets None.
    """
    return [i for i in range(len(per_task[0]))
            if sum(grads[i] is not None for grads in per_task) > 1]


def _binary_cross_entropy(y, p):
    p = ops.clip(p, _EPSILON, 1 - _EPSILON)
    return -(y * ops.log(p) + (1 - y) * ops.log(1 - p))


def _add_gradients(a, b):
    """a + b for gradients that may be None, dense, or IndexedSlices."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, tf.IndexedSlices) and isinstance(b, tf.IndexedSlices):
        return tf.IndexedSlices(tf.concat([a.values, b.values], 0),
                                tf.concat([tf.cast(a.indices, tf.int64), tf.cast(b.indices, tf.int64)], 0),
                                a.dense_shape)
    return tf.convert_to_tensor(a) + tf.convert_to_tensor(b)


def hparams_from_dict(cls, values: Mapping):
    """Builds a hyper-parameter dataclass, rejecting unknown names with a clear error."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s) {unknown} for {cls.__name__}; "
                         f"known: {sorted(fields)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**converted)


__all__ = ["CommonHParams", "Heads", "MultiTaskModel", "chain_marginals", "chained_heads",
           "hparams_from_dict", "marginal_heads", "safe_probability", "step_rates", "PACKAGE"]
