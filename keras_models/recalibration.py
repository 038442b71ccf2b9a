"""Mean recalibration after training: each output's mean prediction made equal to
its mean label on rows of the training split.

A run of a few thousand Adam steps stops wherever its last updates left the
output levels. The ranking is learnt, but for a rare step (1 % of impressions
convert) or a heavy-tailed value the mean prediction of the last iterate lands
10-20 % off, and by a different amount in every run (docs/models.md,
"Recalibration"). Bids need the level, so after `fit` one number per output is
fitted on training rows (never on the evaluation split) and kept in the model:

  step k       a logit shift b_k: p' = sigmoid(logit(p) + b_k), computed as
               p e^b / (1 - p + p e^b), which needs no logit of p and is p itself
               at b = 0. Marginal models shift each marginal m_k. Chained models
               shift each conditional c_k, so m'_k = c'_1 ... c'_k keeps the chain
               ordered. b_k solves mean(m'_k) = mean(y_k), in chain order.
  core target  a scale s on E[y | x] (computed with the recalibrated last step):
               s = sum(y) / sum(E[y | x]). Only for heads whose prediction is a
               mean (decomposition, ziln); the regression head's is a typical
               value, which no scale turns into a mean.

A shift is monotone, so each step's ranking on its own (AUC) is unchanged.
This is an engineering addition of this project [R], not part of any of the
papers; turn it off with the hyper-parameter `recalibrate: false`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import keras
import numpy as np

from keras_models.layers import PACKAGE

_MAX_SHIFT = 20.0          # |b| bound of the bisection: e^20 covers any real rate
_BISECTION_STEPS = 80


def shift_probability(p, exp_shift):
    """p (any shape, NumPy or tensor) moved by a logit shift b, given e^b: exactly p
    at e^b = 1, monotone in p, and inside [0, 1] for every p in [0, 1]."""
    return p * exp_shift / (1.0 - p + p * exp_shift)


@dataclasses.dataclass(frozen=True)
class Recalibration:
    """Fitted values: one logit shift per step (chain order) and the core scale."""

    shifts: tuple[float, ...]
    core_scale: float = 1.0


def solve_shift(mean_at: Callable[[float], float], target: float) -> float:
    """The b in [-20, 20] with mean_at(b) = target, for mean_at increasing in b, by
    bisection; the bound itself when target is out of reach (a step that never or
    always happened in the rows)."""
    low, high = -_MAX_SHIFT, _MAX_SHIFT
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        low, high = (middle, high) if mean_at(middle) < target else (low, middle)
    return (low + high) / 2


def fit_recalibration(step_probs: Sequence[np.ndarray], step_labels: Sequence[np.ndarray],
                      chained: bool,
                      core_mean: Callable[[np.ndarray], np.ndarray] | None = None,
                      core_labels: np.ndarray | None = None) -> Recalibration:
    """Fits the shifts and the core scale on n rows.

    step_probs: per step in chain order, (n,) the model's probabilities before
      recalibration: its conditionals c_k if `chained`, else its marginals m_k.
    step_labels: per step, (n,) 0/1 labels.
    core_mean: maps the recalibrated last step's marginal (n,) to E[y | x] (n,);
      None, or core_labels None, leaves the scale at 1.
    """
    shifts, running = [], None
    for probs, labels in zip(step_probs, step_labels):
        probs = np.asarray(probs, np.float64)
        before = 1.0 if running is None or not chained else running

        def mean_at(b, probs=probs, before=before):
            return float(np.mean(before * shift_probability(probs, np.exp(b))))

        shift = solve_shift(mean_at, float(np.mean(labels)))
        shifts.append(shift)
        running = before * shift_probability(probs, np.exp(shift))
    scale = 1.0
    if core_mean is not None and core_labels is not None:
        predicted = float(np.sum(np.asarray(core_mean(running), np.float64)))
        total = float(np.sum(core_labels))
        if predicted > 0 and total > 0:
            scale = total / predicted
    return Recalibration(tuple(shifts), scale)


@keras.saving.register_keras_serializable(package=PACKAGE)
class RecalibrationLayer(keras.layers.Layer):
    """Holds the fitted values as non-trainable weights and applies them; the
    identity until `assign` is called, so training is unaffected."""

    def __init__(self, steps: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        self.steps = tuple(steps)
        self.exp_shifts = self.add_weight(name="exp_shifts", shape=(len(self.steps),),
                                          initializer="ones", trainable=False)
        self.core_scale = self.add_weight(name="core_scale", shape=(), initializer="ones",
                                          trainable=False)

    def assign(self, values: Recalibration) -> None:
        self.exp_shifts.assign(np.exp(np.asarray(values.shifts, "float64")).astype("float32"))
        self.core_scale.assign(float(values.core_scale))

    def reset(self) -> None:
        self.assign(Recalibration((0.0,) * len(self.steps)))

    def values(self) -> Recalibration:
        return Recalibration(tuple(float(b) for b in np.log(self.exp_shifts.numpy())),
                             float(self.core_scale.numpy()))

    def shift(self, probs: Mapping[str, object]) -> dict:
        """step -> (B,) probabilities (marginals, or a chain's conditionals), each
        moved by its step's shift."""
        return {step: shift_probability(probs[step], self.exp_shifts[i])
                for i, step in enumerate(self.steps)}

    def get_config(self):
        return {**super().get_config(), "steps": list(self.steps)}


__all__ = ["Recalibration", "RecalibrationLayer", "fit_recalibration", "shift_probability",
           "solve_shift"]
