"""Binary detection metrics in plain numpy (labels: 1 = synthetic, scores: higher = more synthetic).

    from models.core.metrics import binary_report
    report = binary_report(labels, probs, threshold=0.5)

Every curve metric is tie-aware: tied scores move the ROC/PR curve in one step, as
scikit-learn does, so a detector that outputs a constant gets AUC 0.5, not 0 or 1.
Metrics that a set with one class cannot define (AUC, AP, EER, TPR@FPR) are None in
reports; `roc_auc` itself returns NaN there.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ECE_BINS = 15
REPORT_FPRS = (0.01, 0.05)


def _as_arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (synthetic), got values {np.unique(y)[:5].tolist()}")
    if not np.isfinite(s).all():
        raise ValueError(f"{int((~np.isfinite(s)).sum())} scores are NaN or infinite")
    return y.astype(np.int64), s


def _has_both_classes(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < int(y.sum()) < y.size


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # Start index of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    run_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_pos * n_neg)); NaN with only one class."""
    y, s = _as_arrays(labels, scores)
    if not _has_both_classes(y):
        return math.nan
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    rank_sum = float(_average_ranks(s)[y == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _cumulative_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True/false positives when flagging score >= t, for each distinct t from high to low."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # Last index of each run of equal scores: all tied samples cross the threshold together.
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), y.size - 1]
    tps = np.cumsum(y_sorted)[last].astype(np.float64)
    fps = (last + 1) - tps
    return tps, fps, s_sorted[last]


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) starting at (0, 0) with threshold +inf; flag = score >= threshold."""
    y, s = _as_arrays(labels, scores)
    if not _has_both_classes(y):
        raise ValueError("a ROC curve needs both real and synthetic samples")
    tps, fps, thr = _cumulative_counts(y, s)
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return fpr, tpr, np.r_[np.inf, thr]


def average_precision(labels, scores) -> float:
    """Step-wise area under precision-recall: sum over thresholds of (R_n - R_{n-1}) * P_n."""
    y, s = _as_arrays(labels, scores)
    if not _has_both_classes(y):
        return math.nan
    tps, fps, _ = _cumulative_counts(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def equal_error_rate(labels, scores) -> float:
    """The rate where FPR equals FNR, read off the (linearly interpolated) ROC curve."""
    fpr, tpr, _ = roc_curve(labels, scores)
    # g = FPR - FNR rises from -1 at (0, 0) to +1 at (1, 1); EER is where it crosses 0.
    g = fpr + tpr - 1.0
    i = int(np.searchsorted(g, 0.0, side="left"))
    if g[i] == 0.0 or i == 0:
        return float(fpr[i])
    alpha = -g[i - 1] / (g[i] - g[i - 1])
    return float(fpr[i - 1] + alpha * (fpr[i] - fpr[i - 1]))


def tpr_at_fpr(labels, scores, max_fpr: float) -> float:
    """Best TPR a threshold achieves while keeping FPR <= max_fpr (no interpolation)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def accuracy(labels, probs, threshold: float) -> float:
    y, p = _as_arrays(labels, probs)
    if not y.size:
        return math.nan
    return float(np.mean((p >= threshold) == (y == 1)))


def brier(labels, probs) -> float:
    y, p = _as_arrays(labels, probs)
    return float(np.mean((p - y) ** 2)) if y.size else math.nan


def reliability_bins(labels, probs, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per equal-width bin of P(synthetic): count, mean predicted probability, fraction synthetic."""
    y, p = _as_arrays(labels, probs)
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)  # p == 1.0 belongs to the last bin
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "edges": np.linspace(0.0, 1.0, bins + 1),
            "count": count,
            "mean_prob": sum_p / count,
            "frac_pos": sum_y / count,
        }


def ece(labels, probs, bins: int = ECE_BINS) -> float:
    """Expected calibration error of P(synthetic): sum_b (n_b / n) |mean p_b - fraction synthetic_b|."""
    r = reliability_bins(labels, probs, bins)
    n = r["count"].sum()
    if not n:
        return math.nan
    full = r["count"] > 0
    gap = np.abs(r["mean_prob"][full] - r["frac_pos"][full])
    return float(np.sum(r["count"][full] / n * gap))


def _finite_or_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def binary_report(labels, probs, threshold: float) -> dict[str, Any]:
    """Every headline metric for one set of calibrated probabilities; undefined ones are None."""
    y, p = _as_arrays(labels, probs)
    n_fake = int(y.sum())
    n_real = int(y.size - n_fake)
    flagged = p >= threshold
    report: dict[str, Any] = {
        "n": int(y.size),
        "n_real": n_real,
        "n_fake": n_fake,
        "threshold": float(threshold),
        "accuracy": _finite_or_none(accuracy(y, p, threshold)),
        "tpr": float(flagged[y == 1].mean()) if n_fake else None,
        "tnr": float((~flagged[y == 0]).mean()) if n_real else None,
        "fpr": float(flagged[y == 0].mean()) if n_real else None,
        "mean_score": float(p.mean()) if y.size else None,
        "brier": _finite_or_none(brier(y, p)),
        "ece": _finite_or_none(ece(y, p)),
        "auc": None,
        "ap": None,
        "eer": None,
        "tpr_at_fpr": None,
    }
    if _has_both_classes(y):
        report.update(
            auc=roc_auc(y, p),
            ap=average_precision(y, p),
            eer=equal_error_rate(y, p),
            tpr_at_fpr={f"{f:g}": tpr_at_fpr(y, p, f) for f in REPORT_FPRS},
        )
    return report


def group_reports(labels, probs, groups, threshold: float) -> dict[str, dict[str, Any]]:
    """binary_report per group value (e.g. per source or generator); empty names become '(none)'."""
    y, p = _as_arrays(labels, probs)
    names = np.asarray([str(g) if g else "(none)" for g in groups], dtype=object)
    if names.size != y.size:
        raise ValueError(f"groups ({names.size}) and labels ({y.size}) differ in length")
    return {str(g): binary_report(y[names == g], p[names == g], threshold) for g in sorted(set(names))}
