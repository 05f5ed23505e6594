"""The quality gate's rules (tests/test_quality_gate.py): what the shipped detector must keep on the
shared datasets' held-back test splits, scored through `fakelens score` exactly as a user would.

The recorded figures live in docs/quality.md on a line `quality-gate: {json}`, written from the same
measurement when the detector ships; the gate fails when a run drifts from them by more than
`tolerance`, or breaks a fixed limit (AUC, per-source FPR, ECE) whatever was recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.core.metrics import ece, roc_auc

DOCS = Path(__file__).resolve().parents[1] / "docs" / "quality.md"


@dataclass(frozen=True)
class Limits:
    min_auc: float = 0.98
    max_source_fpr: float = 0.05  # at the shipped threshold, for real sources with >= min_source_n images
    min_source_n: int = 30
    max_ece: float = 0.05
    min_family_right: float = 0.9  # of the test fakes of a known family given a family name: the right one


def recorded(path: Path = DOCS) -> dict:
    for line in path.read_text().splitlines():
        if line.strip().startswith("quality-gate:"):
            return json.loads(line.split(":", 1)[1])
    raise ValueError(f"{path} has no 'quality-gate: {{...}}' line with the shipped detector's figures")


def measure(labels, scores, thresholds, verdicts, sources, families=None) -> dict:
    """The gate's figures from scored rows (label 1 = synthetic; verdict as the scorer wrote it).
    `families`: (true family or None, the row's `family`) per row, for the attribution figures."""
    y, p = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    flagged = p >= np.asarray(thresholds, dtype=np.float64)
    v, src = np.asarray(verdicts), np.asarray(sources)
    per_source = {}
    for name in sorted(set(src[y == 0].tolist())):
        m = (y == 0) & (src == name)
        per_source[name] = {"n": int(m.sum()), "fpr": float(flagged[m].mean())}
    return {
        "n": int(y.size), "auc": float(roc_auc(y, p)), "ece": float(ece(y, p)),
        "fpr": float(flagged[y == 0].mean()), "tpr": float(flagged[y == 1].mean()),
        "real_called_synthetic": float(np.mean(v[y == 0] == "synthetic")),
        "fake_called_synthetic": float(np.mean(v[y == 1] == "synthetic")),
        "fpr_per_real_source": per_source,
        **(attribution(families) if families is not None else {}),
    }


def attribution(pairs) -> dict:
    """family_right: of fakes of a known family that got a family name, the share named right;
    family_unknown: of fakes of a known family that got any family answer, the share `unknown`."""
    answered = [(t, a) for t, a in pairs if t is not None and a is not None]
    named = [(t, a) for t, a in answered if a != "unknown"]
    return {"family_right": float(np.mean([t == a for t, a in named])) if named else 0.0,
            "family_unknown": float(np.mean([a == "unknown" for _, a in answered])) if answered else 0.0}


def failures(got: dict, want: dict, limits: Limits = Limits()) -> list[str]:
    """Every rule the measured figures break, as sentences; [] when the gate passes."""
    out = []
    if got["auc"] < limits.min_auc:
        out.append(f"AUC {got['auc']:.4f} < {limits.min_auc}")
    if got["ece"] > limits.max_ece:
        out.append(f"ECE {got['ece']:.4f} > {limits.max_ece}")
    for name, s in got["fpr_per_real_source"].items():
        if s["n"] >= limits.min_source_n and s["fpr"] > limits.max_source_fpr:
            out.append(f"real source {name} ({s['n']} images): FPR {s['fpr']:.3f} > {limits.max_source_fpr}")
    if "family_right" in got and got["family_right"] < limits.min_family_right:
        out.append(f"family_right {got['family_right']:.4f} < {limits.min_family_right}")
    tol = float(want.get("tolerance", 0.02))
    for key in ("auc", "fpr", "tpr", "real_called_synthetic", "fake_called_synthetic", "family_right",
                "family_unknown"):
        if key in want and key in got and abs(got[key] - want[key]) > tol:
            out.append(f"{key} {got[key]:.4f} drifted from the recorded {want[key]:.4f} by more than {tol}")
    return out
