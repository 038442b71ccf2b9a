"""Core-target metrics against hand-computed values and scikit-learn/SciPy references."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_squared_error

from tfx_pipeline.metrics import calibration, nmae, normalized_gini, nrmse, spearman


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
    # Perfect order (3, 1, 0): the Lorenz curve joins (0, 0), (1/3, 3/4), (2/3, 1), (1, 1);
    # trapezoid area (1/3) * (3/8 + 7/8 + 1) = 3/4, raw Gini 2 * 3/4 - 1 = 1/2.
    assert normalized_gini(y, y) == pytest.approx(1.0)
    assert normalized_gini(y, 10 * y + 1) == pytest.approx(1.0)    # only the order counts
    # Reversed order (0, 1, 3): the curve is the mirror image, area 1/4, raw -1/2.
    assert normalized_gini(y, -y) == pytest.approx(-1.0)
    # Order (1, 3, 0): points (1/3, 1/4), (2/3, 1), (1, 1); area (1/3) * (1/8 + 5/8 + 1)
    # = 7/12, raw 1/6, normalised (1/6) / (1/2) = 1/3.
    assert normalized_gini(y, np.array([0.0, 2.0, 1.0])) == pytest.approx(1 / 3)
    # Constant predictions: one tie group, the diagonal, area 1/2, Gini 0.
    assert normalized_gini(y, np.zeros(3)) == pytest.approx(0.0, abs=1e-12)


def test_normalized_gini_of_a_random_ranking_is_near_zero():
    rng = np.random.default_rng(1)
    y = rng.lognormal(size=20000) * (rng.random(20000) < 0.1)
    assert abs(normalized_gini(y, rng.random(20000))) < 0.05


def test_ties_do_not_depend_on_row_order():
    y = np.array([5.0, 0.0, 0.0, 1.0])
    p = np.array([1.0, 1.0, 0.0, 0.0])
    assert normalized_gini(y, p) == pytest.approx(normalized_gini(y[::-1], p[::-1]))


def test_undefined_cases_are_nan():
    for metric in (nrmse, nmae, normalized_gini, spearman, calibration):
        assert math.isnan(metric([], []))
    for metric in (nrmse, nmae, normalized_gini, spearman):
        assert math.isnan(metric([2.0, 2.0], [1.0, 3.0])), metric   # constant truth
        assert math.isnan(metric([2.0], [1.0])), metric              # one row
    assert math.isnan(normalized_gini([0.0, 0.0], [1.0, 2.0]))  # no value to rank
    assert math.isnan(calibration([0.0, 0.0], [1.0, 2.0]))      # zero total
    assert math.isnan(spearman([1.0, 2.0], [3.0, 3.0]))          # constant prediction


def test_calibration_by_hand():
    assert calibration([0.0, 2.0, 4.0], [1.0, 1.0, 1.0]) == pytest.approx(0.5)
    assert calibration([0.0, 2.0, 4.0], [3.0, 3.0, 3.0]) == pytest.approx(1.5)
