"""Metrics for a continuous core target, in NumPy (definitions: MODELS.md §A.10, [R]).

  MSE, MAE  mean squared / absolute error.
  NRMSE  RMSE / std(y): the error relative to always predicting the mean (1.0).
  NMAE   MAE / mean|y - mean(y)|: the same for absolute error.
  normalised Gini  sort by prediction (descending); the Lorenz curve joins the
         points (k/n, C(k)), k = 0..n, C(k) the share of the true total among the
         top k rows. Gini = 2 * (area under the curve, trapezoids) - 1, divided by
         the Gini of the perfect ordering (sort by the truth). A perfect ranking
         scores 1, a constant or random one 0, the reversed ranking -1. Tied
         predictions take the mean of their group's values, so the result does
         not depend on the order of ties.
  Spearman  rank correlation with average ranks for ties.
  calibration  mean prediction / mean label: 1 when the predictions add up to
         the truth, 0.5 when they are half of it.

Each returns NaN where it is undefined (empty input, constant truth, a single
row, a zero total).
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def _arrays(y_true, y_pred):
    return np.asarray(y_true, dtype=np.float64).ravel(), np.asarray(y_pred, dtype=np.float64).ravel()


def mse(y_true, y_pred) -> float:
    y, p = _arrays(y_true, y_pred)
    return float(np.mean((y - p) ** 2)) if y.size else float("nan")


def mae(y_true, y_pred) -> float:
    y, p = _arrays(y_true, y_pred)
    return float(np.mean(np.abs(y - p))) if y.size else float("nan")


def nrmse(y_true, y_pred) -> float:
    y, p = _arrays(y_true, y_pred)
    if y.size == 0 or y.std() == 0:
        return float("nan")
    return float(np.sqrt(np.mean((y - p) ** 2)) / y.std())


def nmae(y_true, y_pred) -> float:
    y, p = _arrays(y_true, y_pred)
    if y.size == 0:
        return float("nan")
    spread = np.mean(np.abs(y - y.mean()))
    return float(np.mean(np.abs(y - p)) / spread) if spread > 0 else float("nan")


def _gini_raw(y: np.ndarray, order_key: np.ndarray) -> float:
    """2 * trapezoid area under (k/n, C(k)) - 1, rows sorted by order_key descending,
    ties averaged. With C(0) = 0 and C(n) = 1 the area is mean_k C(k) - 1/(2n)."""
    order = np.argsort(-order_key, kind="stable")
    key, values = order_key[order], y[order]
    # Replace each tie group's values by their mean: the curve no longer depends on tie order.
    _, starts, counts = np.unique(-key, return_index=True, return_counts=True)
    sums = np.add.reduceat(values, starts)
    values = np.repeat(sums / counts, counts)
    cumulative = np.cumsum(values) / values.sum()
    return float(2 * (cumulative.mean() - 0.5 / len(values)) - 1)


def normalized_gini(y_true, y_pred) -> float:
    y, p = _arrays(y_true, y_pred)
    if y.size == 0 or y.sum() <= 0:
        return float("nan")
    perfect = _gini_raw(y, y)
    # A constant truth (one row included) has nothing to rank: the perfect Gini is 0,
    # up to rounding.
    if perfect <= 1e-12:
        return float("nan")
    return _gini_raw(y, p) / perfect


def spearman(y_true, y_pred) -> float:
    y, p = _arrays(y_true, y_pred)
    if y.size < 2 or np.all(y == y[0]) or np.all(p == p[0]):
        return float("nan")
    return float(stats.spearmanr(y, p).statistic)


def calibration(y_true, y_pred) -> float:
    y, p = _arrays(y_true, y_pred)
    if y.size == 0 or y.sum() == 0:
        return float("nan")
    return float(p.mean() / y.mean())
