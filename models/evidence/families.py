"""`family` and `family_score` beside every verdict: the one attribution rule
(models/core/attribution.py) applied to score rows, for plain images, face mode and videos.

A score row is [calibrated probability synthetic, family logits...]; a bare probability
is a row of one (a model without a family head). The family is always attributed on the
*final* label (after a provenance declaration, `models.core.verdict.decide`): null for `real`,
the top family when the open-set rule accepts it, else "unknown". It never changes
the verdict. Used by the HTTP service (service/evidence.py, service/verdict.py), `fakelens score`
and `fakelens inspect`; free of the service's imports so the scorer's decode processes stay light.

- face mode: each face gets its own family (on its own label); the answer's family is that of
  the face that gave the max score (the whole image's when no face was found);
- video: each timeline frame gets its family (its max face's in face mode); the video's family
  comes from the mean family logits over every frame or face crop scored, attributed
  on the video's final label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.core.attribution import attribute_row
from models.core.config import DetectorConfig
from models.evidence.faces import FacePlan, summarize
from models.evidence.video import Frame, VideoFacts, summarize_video


def as_row(row: float | Sequence[float]) -> list[float]:
    """A score row as a list of floats; a bare probability becomes a row of one (no families)."""
    return [float(v) for v in np.asarray(row, dtype=np.float64).reshape(-1)]


def family_fields(label: str | None, row: float | Sequence[float] | None, cfg: DetectorConfig) -> dict:
    """{"family", "family_score"} of a picture whose final label is `label` (null/null without a label or row)."""
    if label is None or row is None:
        return {"family": None, "family_score": None}
    return attribute_row(label, as_row(row), cfg)


def rows_of(rows, cfg: DetectorConfig) -> np.ndarray:
    """Score rows as an N x C array (bare probabilities: rows without family columns)."""
    arr = np.asarray(rows, dtype=np.float64)
    return arr.reshape(-1, cfg.outputs if arr.ndim > 1 else 1)


def face_summary(plan: FacePlan, rows, cfg: DetectorConfig) -> tuple[dict, np.ndarray]:
    """models.evidence.faces.summarize on the verdict column, each face with its own family, and the
    score row of the face that gave the max (the whole image's when no face was found)."""
    rows = rows_of(rows, cfg)
    faces = summarize(plan, rows[:, 0], cfg)
    for face, row in zip(faces["faces"], rows, strict=False):
        face.update(family_fields(face["label"], row, cfg))
    return faces, rows[faces.get("max_face", 0)]


def video_summary(facts: VideoFacts, frames: list[Frame], plans: list[FacePlan], rows, cfg: DetectorConfig,
                  aggregate: str = "mean", faces: bool = False) -> tuple[dict, list[float]]:
    """models.evidence.video.summarize_video on the verdict column, each timeline frame with its family
    (on the frame's label), and the video's family row: [its score, the mean family logits over
    every frame or crop scored], to attribute on the video's final label with `family_fields`."""
    rows = rows_of(rows, cfg)
    out = summarize_video(facts, frames, plans, rows[:, 0], cfg, aggregate, faces)
    start = 0
    for entry, plan in zip(out["timeline"], plans, strict=True):
        part = rows[start : start + len(plan.views)]
        start += len(plan.views)
        if faces:
            face_rows, frame_row = face_summary(plan, part, cfg)
            entry["faces"] = face_rows["faces"]
        else:
            frame_row = part[0]
        entry.update(family_fields(entry["label"], frame_row, cfg))
    return out, [out["score"], *rows[:, 1:].mean(axis=0)]
