"""The one verdict rule: calibrated probability -> `synthetic`, `real` or `uncertain`.

The service, the scorer, evaluation and the page all call `label_for`; nothing else compares
a score with the threshold. The threshold is the binary operating point (fitted on validation
data for a target FPR); the optional uncertain band (low, high), also chosen on validation
data and stored with the model, marks the scores where the model's evidence is too weak to
act on: a `synthetic` verdict needs p >= high, a `real` one p < low.
"""

from __future__ import annotations

import numpy as np

from models.core.config import DetectorConfig

LABELS = ("real", "uncertain", "synthetic")


def band(cfg: DetectorConfig) -> tuple[float, float]:
    """(low, high) of the uncertain band; (threshold, threshold) when the model has none."""
    if cfg.uncertain_band is None:
        return cfg.threshold, cfg.threshold
    return cfg.uncertain_band


def label_for(probability: float, cfg: DetectorConfig) -> str:
    low, high = band(cfg)
    p = float(probability)
    if p >= high:
        return "synthetic"
    if p < low:
        return "real"
    return "uncertain"


def labels_for(probabilities, cfg: DetectorConfig) -> list[str]:
    return [label_for(p, cfg) for p in np.asarray(probabilities, dtype=np.float64).reshape(-1)]


def is_flagged(probabilities, cfg: DetectorConfig) -> np.ndarray:
    """The binary decision at the threshold (what FPR/TPR at the threshold are measured on)."""
    return np.asarray(probabilities, dtype=np.float64) >= cfg.threshold


def describe(cfg: DetectorConfig) -> dict:
    """The decision rule as the API and score rows report it."""
    low, high = band(cfg)
    return {"threshold": float(cfg.threshold), "uncertain_band": [float(low), float(high)]}


def decide(probability: float | None, cfg: DetectorConfig, provenance: dict | None = None) -> tuple[str, str]:
    """(label, reason): the model's `label_for`, unless the file itself declares generative AI.

    reason is "declared" when an intact provenance declaration (models/evidence/provenance.py) made
    the label `synthetic`, else "model". Provenance never pushes a verdict towards `real`:
    missing or camera-looking metadata proves nothing. `probability` may be None when the
    image could not be scored but its metadata was read.
    """
    if provenance and provenance.get("declared_ai"):
        return "synthetic", "declared"
    if probability is None:
        raise ValueError("no score and no provenance declaration: there is nothing to decide on")
    return label_for(probability, cfg), "model"
