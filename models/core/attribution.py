"""Which generator family a picture resembles, with an honest "unknown": the one attribution rule.

A detector with a family head (`DetectorConfig.attribution.families`) outputs, per view, the
verdict logit and then one logit per family (models/core/network.py). A picture's outputs are
combined over its views like the verdict logit (the scale policy), then turned into a score row:

    row = [p_synthetic, p_family_1, ..., p_family_K]     # `score_rows`

`attribute(label, row, cfg)` gives the answer's `family` and `family_score`:
- `null` and `null` when the verdict is `real` (nothing to attribute) or the model has no family head;
- the top family's name and softmax probability when that probability reaches the open-set
  threshold `min_confidence` (chosen on validation data);
- "unknown" with that same top probability when it does not: the picture looks synthetic but like
  no family the head was trained on.
Attribution reads the verdict; it never changes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.core.config import AttributionConfig, DetectorConfig
from models.core.preprocess import aggregate_views, calibrated_probability

UNKNOWN = "unknown"


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def aggregate_outputs(view_outputs: np.ndarray, counts: list[int], cfg: DetectorConfig) -> np.ndarray:
    """Per-picture outputs (N x C) from per-view outputs (V x C), each column combined over a
    picture's views by the scale policy's rule (`aggregate_views`)."""
    out = np.asarray(view_outputs, dtype=np.float64).reshape(-1, cfg.outputs)
    return np.stack([aggregate_views(out[:, c], counts, cfg.preprocess) for c in range(cfg.outputs)], axis=1)


def score_rows(outputs: np.ndarray, cfg: DetectorConfig) -> np.ndarray:
    """Per-picture outputs (N x C raw) -> score rows (N x C): the calibrated probability that the
    picture is synthetic, then the family probabilities (softmax over families)."""
    outputs = np.asarray(outputs, dtype=np.float64).reshape(-1, cfg.outputs)
    rows = np.empty_like(outputs)
    rows[:, 0] = calibrated_probability(outputs[:, 0], cfg.temperature)
    if cfg.outputs > 1:
        rows[:, 1:] = softmax(outputs[:, 1:], cfg.attribution.temperature)
    return rows


def attribute(label: str, family_probabilities: Sequence[float] | None, att: AttributionConfig) -> dict:
    """{"family", "family_score"} for a picture whose verdict is `label` (see the module docstring)."""
    probs = np.asarray(family_probabilities if family_probabilities is not None else [], dtype=np.float64)
    if label == "real" or not att.families or probs.size != len(att.families) or not np.all(np.isfinite(probs)):
        return {"family": None, "family_score": None}
    top = int(np.argmax(probs))
    score = float(probs[top])
    return {"family": att.families[top] if score >= att.min_confidence else UNKNOWN, "family_score": score}


def attribute_row(label: str, row: Sequence[float], cfg: DetectorConfig) -> dict:
    """`attribute` on a score row (its column 0, the verdict probability, is skipped)."""
    return attribute(label, list(row)[1:], cfg.attribution)


def names(probs: np.ndarray, att: AttributionConfig) -> list[str]:
    """The open-set answer for each row of family probabilities (N x K), ignoring the verdict:
    what training and the benchmarks measure attribution on."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(att.families))
    top = probs.argmax(axis=1)
    return [att.families[t] if p[t] >= att.min_confidence else UNKNOWN for t, p in zip(top, probs, strict=True)]
