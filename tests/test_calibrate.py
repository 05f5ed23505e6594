"""Temperature scaling and threshold choice (training/calibrate.py)."""

from __future__ import annotations

import numpy as np
import pytest

from models.core.config import DetectorConfig
from models.core.preprocess import calibrated_probability
from training.calibrate import calibrate, is_calibrated, nll, threshold_at_fpr


def _synthetic(n: int, true_t: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 4.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z / true_t))).astype(int)
    return z, y


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_temperature_scaling_recovers_known_temperature(true_t):
    z, y = _synthetic(20_000, true_t)
    cfg = calibrate(DetectorConfig(), z, y)
    assert cfg.temperature == pytest.approx(true_t, rel=0.08)
    assert nll(z, y, cfg.temperature) <= nll(z, y, 1.0)


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_threshold_meets_target_fpr_and_is_smallest(target):
    z, y = _synthetic(3_000, 2.0, seed=1)
    cfg = calibrate(DetectorConfig(target_fpr=target), z, y)
    real = calibrated_probability(z[y == 0], cfg.temperature)
    assert np.mean(real >= cfg.threshold) <= target
    # Any lower threshold that flags one more real image breaks the target.
    below = real[real < cfg.threshold].max()
    assert np.mean(real >= below) > target
    assert cfg.metrics["val"]["fpr"] <= target and cfg.metrics["val"]["auc"] > 0.5


def test_threshold_with_tied_real_scores():
    real = np.array([0.9, 0.9, 0.9, 0.2, 0.1])
    t = threshold_at_fpr(real, 0.4)  # 2 of 5 allowed, but the three 0.9s move together
    assert t > 0.9 and np.mean(real >= t) == 0.0
    assert threshold_at_fpr(real, 1.0) == 0.0


def test_calibrate_returns_a_copy_and_marks_calibrated():
    z, y = _synthetic(500, 1.0)
    base = DetectorConfig(metrics={"epoch": 3})
    assert not is_calibrated(DetectorConfig())
    cfg = calibrate(base, z, y)
    assert base.temperature == 1.0 and base.metrics == {"epoch": 3}
    assert cfg.metrics["epoch"] == 3 and "val" in cfg.metrics and is_calibrated(cfg)
    assert cfg.arch == base.arch and cfg.preprocess == base.preprocess


def test_calibrate_rejects_one_class_and_nan():
    with pytest.raises(ValueError, match="real and synthetic"):
        calibrate(DetectorConfig(), np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="NaN"):
        calibrate(DetectorConfig(), np.array([0.1, np.nan]), np.array([0, 1]))
