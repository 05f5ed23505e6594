"""Post-hoc calibration: temperature scaling plus an operating threshold at a target FPR.

    from training.calibrate import calibrate
    cfg = calibrate(cfg, val_logits, val_labels)   # a new DetectorConfig; cfg is unchanged

The temperature T minimises the validation negative log-likelihood of sigmoid(z / T).
The threshold is then chosen on the REAL validation images' calibrated probabilities:
the smallest value with FPR <= cfg.target_fpr, where an image is flagged when
probability >= threshold (the same rule as Detector.is_synthetic).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from models.core.config import DetectorConfig
from models.core.drift import REFERENCE_KEY, reference_from_validation
from models.core.metrics import binary_report
from models.core.preprocess import calibrated_probability

# Temperatures outside this range mean the logits carry almost no signal or are wildly
# overconfident; clamping keeps a bad fit from producing inf/0 probabilities downstream.
LOG_T_RANGE = (math.log(0.02), math.log(50.0))
_GOLDEN = (math.sqrt(5) - 1) / 2


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of sigmoid(logits / T), computed without overflow."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    sign = np.where(np.asarray(labels) == 1, 1.0, -1.0)
    return float(np.mean(np.logaddexp(0.0, -sign * z)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iters: int = 80) -> float:
    """Golden-section search on log T (NLL is convex in 1/T, so unimodal in log T)."""
    lo, hi = LOG_T_RANGE
    a = hi - _GOLDEN * (hi - lo)
    b = lo + _GOLDEN * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(iters):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return math.exp((lo + hi) / 2)


def threshold_at_fpr(real_probs: np.ndarray, target_fpr: float) -> float:
    """Smallest threshold t with mean(real_probs >= t) <= target_fpr."""
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target_fpr={target_fpr} must be between 0 and 1")
    r = np.sort(np.asarray(real_probs, dtype=np.float64))[::-1]
    if not r.size:
        raise ValueError("no real images to choose a threshold on")
    allowed = math.floor(target_fpr * r.size + 1e-9)  # false positives we may keep
    if allowed >= r.size:
        return 0.0
    # Flag the `allowed` highest-scoring real images at most: sit just above the next one.
    return float(np.nextafter(r[allowed], np.inf))


def group_weights(groups) -> np.ndarray:
    """Weights that give every group (source) the same total: the largest does not set the rule."""
    g = np.asarray(groups).astype(str)
    names, inverse, counts = np.unique(g, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse] / len(names)


def weighted_threshold_at_fpr(real_probs: np.ndarray, weights: np.ndarray, target_fpr: float) -> float:
    """Smallest threshold t whose weighted share of real images with p >= t is <= target_fpr."""
    p = np.asarray(real_probs, dtype=np.float64)
    if not p.size:
        raise ValueError("no real images to choose a threshold on")
    order = np.argsort(-p, kind="stable")
    w = np.asarray(weights, dtype=np.float64)[order]
    flagged = np.cumsum(w) / w.sum()  # weighted FPR when the top k+1 reals are flagged
    ok = np.flatnonzero(flagged <= target_fpr + 1e-12)
    k = 0 if not ok.size else ok[-1] + 1  # how many of the top reals may be flagged
    # Ties: every real at the same score as the first unflagged one stays unflagged too.
    return 0.0 if k >= p.size else float(np.nextafter(p[order][k], np.inf))


def uncertain_band(probs: np.ndarray, y: np.ndarray, weights: np.ndarray, threshold: float,
                   target_fpr: float, miss_rate: float = 0.05) -> tuple[float, float]:
    """(low, high): `synthetic` needs p >= high, where the weighted val FPR is target_fpr / 5;
    `real` needs p < low, below which at most `miss_rate` of val fakes fall."""
    high = max(threshold, weighted_threshold_at_fpr(probs[y == 0], weights[y == 0], target_fpr / 5))
    fakes = np.sort(probs[y == 1])
    low = min(threshold, float(fakes[int(math.floor(miss_rate * fakes.size))])) if fakes.size else threshold
    return float(low), float(min(high, 1.0))


def _check_inputs(val_logits, val_labels) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(val_logits, dtype=np.float64).reshape(-1)
    y = np.asarray(val_labels).reshape(-1)
    if z.shape != y.shape:
        raise ValueError(f"val_logits ({z.size}) and val_labels ({y.size}) differ in length")
    if not np.isfinite(z).all():
        raise ValueError(
            f"{int((~np.isfinite(z)).sum())} validation logits are NaN or infinite; the model diverged"
        )
    if not np.isin(y, (0, 1)).all():
        raise ValueError("val_labels must be 0 (real) or 1 (synthetic)")
    n_fake = int(y.sum())
    if n_fake == 0 or n_fake == y.size:
        raise ValueError(
            f"calibration needs real and synthetic validation images; got {y.size - n_fake} real "
            f"and {n_fake} synthetic (add both to the val split)"
        )
    return z, y.astype(np.int64)


def calibrate(detector_config: DetectorConfig, val_logits, val_labels, groups=None) -> DetectorConfig:
    """A copy of detector_config with fitted temperature, threshold and validation metrics.

    With `groups` (each val image's source), the threshold holds the target FPR on the
    source-balanced pool of real images (every real source counts the same, however many
    images it has), the uncertain band is fitted too, and the val FPR per real source is
    recorded.
    """
    z, y = _check_inputs(val_logits, val_labels)
    temperature = fit_temperature(z, y)
    probs = calibrated_probability(z, temperature)
    band, per_source = None, {}
    if groups is None:
        threshold = threshold_at_fpr(probs[y == 0], detector_config.target_fpr)
    else:
        g = np.asarray(groups).astype(str)
        w = np.zeros_like(probs)
        for label in (0, 1):
            w[y == label] = group_weights(g[y == label])
        threshold = weighted_threshold_at_fpr(probs[y == 0], w[y == 0], detector_config.target_fpr)
        band = uncertain_band(probs, y, w, threshold, detector_config.target_fpr)
        for name in sorted(set(g[y == 0])):
            real = probs[(y == 0) & (g == name)]
            per_source[name] = {"n": int(real.size), "fpr_at_threshold": float(np.mean(real >= threshold))}
    report = binary_report(y, probs, threshold)
    calibration = {
        "n_val": int(y.size),
        "nll_uncalibrated": nll(z, y, 1.0),
        "nll_calibrated": nll(z, y, temperature),
        "target_fpr": detector_config.target_fpr,
        "balanced_over_sources": groups is not None,
    }
    if per_source:
        calibration["val_fpr_per_real_source"] = per_source
    fitted = dataclasses.replace(detector_config, temperature=temperature, threshold=threshold, uncertain_band=band)
    # The val split's score and verdict counts: what `fakelens drift CURRENT` compares against.
    metrics = {**detector_config.metrics, "val": report, "calibration": calibration,
               REFERENCE_KEY: reference_from_validation(probs, y, fitted)}
    return dataclasses.replace(fitted, metrics=metrics)


def is_calibrated(cfg: DetectorConfig) -> bool:
    """False for a config still at its defaults (T = 1, threshold 0.5, no recorded metrics)."""
    return not (cfg.temperature == 1.0 and cfg.threshold == 0.5 and not cfg.metrics)
