"""Which generator family a picture resembles, with an honest "unknown": the one attribution rule.

A detector with a family head (`DetectorConfig.attribution.families`) outputs, per view, the
verdict logit and then one logit per family (models/core/network.py). A picture's outputs are
combined over its views like the verdict logit (the scale policy), then turned into a score row:

    row = [p_synthetic, z_family_1, ..., z_family_K]     # `score_rows`: probability, family logits

The family logits stay raw in the row because the open-set rule needs more than their softmax:
`attribute(label, logits, att)` gives the answer's `family` and `family_score`:
- `null` and `null` when the verdict is `real` (nothing to attribute) or the model has no family head;
- the top family's name and its softmax probability when the open-set score reaches the rule's
  threshold (AttributionConfig: the energy T * logsumexp(z / T) by default; both chosen on
  validation data);
- "unknown", with that same top probability, when it does not: the picture looks synthetic but
  like no family the head was trained on.
Attribution reads the verdict; it never changes it. Rows of several pictures (a video's frames)
combine by averaging their family logits, as views do.
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
    return aggregate_views(np.asarray(view_outputs, dtype=np.float64).reshape(-1, cfg.outputs), counts, cfg.preprocess)


def score_rows(outputs: np.ndarray, cfg: DetectorConfig) -> np.ndarray:
    """Per-picture outputs (N x C raw) -> score rows (N x C): the calibrated probability that the
    picture is synthetic, then the raw family logits (what `attribute` reads)."""
    rows = np.array(outputs, dtype=np.float64).reshape(-1, cfg.outputs)
    rows[:, 0] = calibrated_probability(rows[:, 0], cfg.temperature)
    return rows


def open_set_score(logits: np.ndarray, rule: str, temperature: float) -> np.ndarray:
    """The open-set rule's score of each row of family logits (N x K): higher = more like a known family."""
    z = np.atleast_2d(np.asarray(logits, dtype=np.float64)) / temperature
    if rule == "max-softmax":
        return softmax(z).max(axis=1)
    top = z.max(axis=1)
    return temperature * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def attribute(label: str, family_logits: Sequence[float] | None, att: AttributionConfig) -> dict:
    """{"family", "family_score"} for a picture whose verdict is `label` (see the module docstring)."""
    z = np.asarray(family_logits if family_logits is not None else [], dtype=np.float64)
    if label == "real" or not att.families or z.size != len(att.families) or not np.all(np.isfinite(z)):
        return {"family": None, "family_score": None}
    probs = softmax(z, att.temperature)
    top = int(np.argmax(probs))
    known = open_set_score(z, att.rule, att.temperature)[0] >= att.threshold
    return {"family": att.families[top] if known else UNKNOWN, "family_score": float(probs[top])}


def attribute_row(label: str, row: Sequence[float], cfg: DetectorConfig) -> dict:
    """`attribute` on a score row (its column 0, the verdict probability, is skipped)."""
    return attribute(label, list(row)[1:], cfg.attribution)


def names(logits: np.ndarray, att: AttributionConfig) -> list[str]:
    """The open-set answer for each row of family logits (N x K), ignoring the verdict: what
    training and the benchmarks measure attribution on."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1, len(att.families))
    known = open_set_score(z, att.rule, att.temperature) >= att.threshold
    return [att.families[t] if k else UNKNOWN for t, k in zip(z.argmax(axis=1), known, strict=True)]
