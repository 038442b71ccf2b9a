"""Core-target metrics against hand-computed values and scikit-learn/SciPy references."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_squared_error

from tfx_pipeline.metrics import nmae, normalized_gini, nrmse, spearman


def test_nrmse_and_nmae_by_hand():
    y = np.array([0.0, 0.0, 4.0])            # mean 4/3, population std sqrt(32/9)
    p = np.array([1.0, 0.0, 2.0])
    assert nrmse(y, p) == pytest.approx(math.sqrt(5 / 3) / math.sqrt(32 / 9))
    assert nmae(y, p) == pytest.approx(1.0 / (16 / 9))      # MAE 1; mean|y - mean| = 16/9
    # A constant predictor at the mean scores exactly 1 on both.
    assert nrmse(y, np.full(3, y.mean())) == pytest.approx(1.0)
    assert nmae(y, np.full(3, y.mean())) == pytest.approx(1.0)


def test_against_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    y, p = rng.lognormal(size=500), rng.lognormal(size=500)
    assert nrmse(y, p) == pytest.approx(math.sqrt(mean_squared_error(y, p)) / y.std())
    assert nmae(y, p) == pytest.approx(mean_absolute_error(y, p) / np.mean(np.abs(y - y.mean())))
    assert spearman(y, p) == pytest.approx(stats.spearmanr(y, p).statistic)


def test_normalized_gini_by_hand():
    y = np.array([0.0, 1.0, 3.0])
    # Perfect order (3, 1, 0): C = 3/4, 1, 1 -> raw 2 * (11/12) - 1 = 5/6.
    assert normalized_gini(y, y) == pytest.approx(1.0)
    # Prediction order (0, 1, 3) -- the worst: C = 0, 1/4, 1 -> raw 2 * (5/12) - 1 = -1/6.
    assert normalized_gini(y, -y) == pytest.approx((-1 / 6) / (5 / 6))
    # Constant predictions: one tie group, every C(k) = k/n -> raw 2 * (2/3) - 1 = 1/3.
    assert normalized_gini(y, np.zeros(3)) == pytest.approx((1 / 3) / (5 / 6))


def test_ties_do_not_depend_on_row_order():
    y = np.array([5.0, 0.0, 0.0, 1.0])
    p = np.array([1.0, 1.0, 0.0, 0.0])
    assert normalized_gini(y, p) == pytest.approx(normalized_gini(y[::-1], p[::-1]))


def test_undefined_cases_are_nan():
    for metric in (nrmse, nmae, normalized_gini, spearman):
        assert math.isnan(metric([], []))
        assert math.isnan(metric([2.0, 2.0], [1.0, 3.0])) or metric is normalized_gini
    assert math.isnan(normalized_gini([0.0, 0.0], [1.0, 2.0]))  # no value to rank
    assert math.isnan(spearman([1.0, 2.0], [3.0, 3.0]))          # constant prediction
