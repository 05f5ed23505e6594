"""The scale policy's rule, fitted on validation data: how much the native view's logit counts.

A picture reaches the model as a resized whole and, when it is large enough, as native-resolution
crops (models/core/preprocess.py `plan_views`); its logit is (1 - w) * resized + w * native. Datasets that
store both views of a picture as separate files (realfake-native beside its shrunk parents,
realfake-families) let w be chosen where it matters: on val pictures that have both views.

    w, table = choose_native_weight(val_samples, val_logits)
    z, y, groups = picture_logits(val_samples, val_logits, w)   # one row per picture
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from models.core.dataset import Sample
from models.core.metrics import roc_auc

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _pictures(samples: list[Sample], logits: np.ndarray) -> list[tuple[list, list, Sample]]:
    """(resized logits, native logits, a representative sample) per (picture, label); a logit may
    be a row of outputs (the verdict logit, then family logits).

    The label is part of the key: a synthetic twin shares its real's picture id but is another picture."""
    groups: dict[tuple[str, int], tuple[list, list, list[Sample]]] = defaultdict(lambda: ([], [], []))
    for s, z in zip(samples, np.asarray(logits, dtype=np.float64), strict=True):
        resized, native, members = groups[(s.picture or s.path, s.label)]
        (native if s.view == "native" else resized).append(z)
        members.append(s)
    out = []
    for resized, native, members in groups.values():
        rep = next((m for m in members if m.view != "native"), members[0])
        out.append((resized, native, rep))
    return out


def combine(resized: list, native: list, weight: float):
    if resized and native:
        return (1 - weight) * np.mean(resized, axis=0) + weight * np.mean(native, axis=0)
    return np.mean(resized or native, axis=0)


def picture_rows(samples: list[Sample], logits: np.ndarray, weight: float) -> tuple[np.ndarray, list[Sample]]:
    """One logit (or row of outputs) per picture, its views combined, and the picture's sample."""
    groups = _pictures(samples, logits)
    return np.array([combine(r, n, weight) for r, n, _ in groups]), [rep for _, _, rep in groups]


def picture_logits(samples: list[Sample], logits: np.ndarray, weight: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One logit per picture (its views combined), its label and its source."""
    z, reps = picture_rows(samples, logits, weight)
    return z, np.array([rep.label for rep in reps]), [rep.source for rep in reps]


def has_both_views(samples: list[Sample]) -> bool:
    return any(s.view == "native" for s in samples) and any(s.view != "native" for s in samples)


def choose_native_weight(samples: list[Sample], logits: np.ndarray) -> tuple[float, dict[str, float]]:
    """The w with the best val AUC over the pictures that have both views (ties: nearest 0.5)."""
    rows = [(r, n, rep) for r, n, rep in _pictures(samples, logits) if r and n]
    labels = np.array([rep.label for _, _, rep in rows])
    if len(set(labels.tolist())) < 2:
        return 0.5, {}
    table = {f"{w:g}": float(roc_auc(labels, np.array([combine(r, n, w) for r, n, _ in rows]))) for w in WEIGHTS}
    best = max(WEIGHTS, key=lambda w: (round(table[f"{w:g}"], 6), -abs(w - 0.5)))
    return best, table
