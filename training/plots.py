"""Evaluation plots (matplotlib, Agg backend): ROC curve, reliability diagram, score histogram.

    write_plots(out_dir, labels, probs, threshold) -> {"roc": "roc.png", ...}

Plots with one class only (no ROC is defined) are skipped rather than drawn empty.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from models.core.atomic import atomic_write
from models.core.metrics import ECE_BINS, reliability_bins, roc_auc, roc_curve


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def plot_roc(ax, labels: np.ndarray, probs: np.ndarray, threshold: float) -> None:
    fpr, tpr, _ = roc_curve(labels, probs)
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {roc_auc(labels, probs):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    flagged = probs >= threshold
    op = (flagged[labels == 0].mean(), flagged[labels == 1].mean())
    ax.scatter([op[0]], [op[1]], c="red", zorder=3, label=f"threshold {threshold:.3f}")
    ax.set(
        xlabel="false positive rate (real flagged)",
        ylabel="true positive rate (synthetic caught)",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title="ROC",
    )
    ax.legend(loc="lower right")


def plot_reliability(ax, labels: np.ndarray, probs: np.ndarray) -> None:
    r = reliability_bins(labels, probs, ECE_BINS)
    full = r["count"] > 0
    centers = (r["edges"][:-1] + r["edges"][1:]) / 2
    ax.bar(centers[full], r["frac_pos"][full], width=1 / ECE_BINS, alpha=0.6, edgecolor="k", label="observed")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    ax.plot(r["mean_prob"][full], r["frac_pos"][full], "o-", c="C1", label="mean predicted")
    ax.set(
        xlabel="predicted P(synthetic)",
        ylabel="fraction synthetic",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"Reliability ({ECE_BINS} bins)",
    )
    ax.legend(loc="upper left")


def plot_histogram(ax, labels: np.ndarray, probs: np.ndarray, threshold: float) -> None:
    bins = np.linspace(0, 1, 31)
    for label, name, color in ((0, "real", "C0"), (1, "synthetic", "C3")):
        if (labels == label).any():
            ax.hist(
                probs[labels == label],
                bins=bins,
                alpha=0.55,
                color=color,
                label=f"{name} (n={int((labels == label).sum())})",
            )
    ax.axvline(threshold, c="k", ls="--", lw=1, label="threshold")
    ax.set(xlabel="calibrated P(synthetic)", ylabel="images", title="Score distribution per class")
    ax.legend(loc="upper center")


def write_plots(out: Path, labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, str]:
    """Write the PNGs under out; returns name -> file name of each one written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    both = 0 < int(labels.sum()) < labels.size
    jobs = {
        "roc": (lambda ax: plot_roc(ax, labels, probs, threshold)) if both else None,
        "reliability": lambda ax: plot_reliability(ax, labels, probs),
        "score_histogram": lambda ax: plot_histogram(ax, labels, probs, threshold),
    }
    written = {}
    for name, draw in jobs.items():
        if draw is None:
            continue
        fig, ax = plt.subplots(figsize=(5, 4.5))
        try:
            draw(ax)
            _save(fig, Path(out) / f"{name}.png")
        finally:
            plt.close(fig)
        written[name] = f"{name}.png"
    return written
