"""Request-level glue for the evidence features: face mode, /explain and video, shared by the
HTTP service, `fakelens score` and `fakelens inspect`/`explain`.

Each feature is split the same way the plain /detect path is: a synchronous `plan_*` that
decodes and cuts views (run in a worker thread by the service), the model call (remote
batched `score` in the service, `Detector.scores_from_views` locally), then an
`answer_*` that turns score rows (probability synthetic, then family logits) into the
JSON answer. The logic itself lives in models/ (faces, explain, video, provenance,
core/attribution); the final label always comes from `models.core.verdict.decide`, and
`family`/`family_score` are attributed on that final label (service/verdict.py).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models.core.attribution import aggregate_outputs, score_rows
from models.core.config import DetectorConfig
from models.core.preprocess import ImageFacts, eval_views
from models.core.verdict import decide, describe
from models.evidence.explain import Heat, cell_size, occluded_views, overlay, relevance_map
from models.evidence.faces import FacePlan, plan_faces
from models.evidence.families import face_summary, family_fields, video_summary
from models.evidence.provenance import read_provenance
from models.evidence.video import (
    Frame,
    Sampling,
    VideoError,
    VideoFacts,
    VideoLimits,
    frame_plans,
    sample_frames,
)
from models.runtime.prepare import Limits
from service.errors import BadRequest, from_video_error
from service.verdict import decode_upload, verdict


@dataclass(frozen=True)
class FaceItem:
    plan: FacePlan
    facts: ImageFacts
    provenance: dict


def plan_face_mode(data: bytes, cfg: DetectorConfig, limits: Limits) -> FaceItem:
    rgb, facts = decode_upload(data, limits)
    return FaceItem(plan_faces(rgb, cfg.preprocess), facts, read_provenance(data))


def answer_face_mode(item: FaceItem, rows, cfg: DetectorConfig, model: dict) -> dict:
    """The /detect answer in face mode: score = max over faces, plus boxes and per-face scores;
    family = that of the face that gave the max."""
    faces, worst = face_summary(item.plan, rows, cfg)
    out = verdict(worst, item.facts, cfg, model, item.provenance)
    out["faces"] = {k: v for k, v in faces.items() if k != "score"}
    return out


@dataclass(frozen=True)
class ExplainItem:
    rgb: Image.Image
    facts: ImageFacts
    provenance: dict
    views: np.ndarray  # the model's views (V x 3 x S x S)
    occluded: np.ndarray  # V*grid*grid occluded copies
    grid: int


def plan_explain(data: bytes, cfg: DetectorConfig, limits: Limits, grid: int) -> ExplainItem:
    try:
        cell_size(cfg.preprocess, grid)
    except ValueError as e:
        raise BadRequest(str(e), kind="bad_option") from None
    rgb, facts = decode_upload(data, limits)
    views = eval_views(rgb, cfg.preprocess)
    return ExplainItem(rgb, facts, read_provenance(data), views, occluded_views(views, grid), grid)


def png_base64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def answer_explain(item: ExplainItem, base_outputs, occluded_logits, cfg: DetectorConfig, model: dict,
                   with_overlay: bool = True) -> tuple[dict, Heat]:
    """The /explain answer: the verdict (and family) of the unoccluded views, the relevance grid, the
    overlay PNG. `base_outputs`: the unoccluded views' raw outputs (V x C, or V verdict logits)."""
    from models.core.preprocess import calibrated_probability

    base = np.asarray(base_outputs, dtype=np.float64).reshape(len(item.views), -1)
    heat = relevance_map(item.rgb, cfg.preprocess, base[:, 0], occluded_logits, item.grid)
    probability = float(calibrated_probability(np.array([heat.base_logit]), cfg.temperature)[0])
    row = [probability]
    if base.shape[1] == cfg.outputs > 1:
        row += list(score_rows(aggregate_outputs(base, [len(base)], cfg), cfg)[0, 1:])
    out = verdict(row, item.facts, cfg, model, item.provenance)
    out["heatmap"] = heat.to_dict()
    if with_overlay:
        out["overlay_png_base64"] = png_base64(overlay(item.rgb, heat))
    return out, heat


@dataclass(frozen=True)
class VideoItem:
    facts: VideoFacts
    frames: list[Frame]
    plans: list[FacePlan]
    provenance: dict

    @property
    def views(self) -> list[np.ndarray]:
        return [v for p in self.plans for v in p.views]


def plan_video(data: bytes, cfg: DetectorConfig, sampling: Sampling, limits: VideoLimits, faces: bool) -> VideoItem:
    try:
        facts, frames = sample_frames(data, sampling, limits)
    except VideoError as e:
        raise from_video_error(e) from None
    return VideoItem(facts, frames, frame_plans(frames, cfg.preprocess, faces), read_provenance(data))


def answer_video(item: VideoItem, rows, cfg: DetectorConfig, model: dict, aggregate: str,
                 faces: bool) -> dict:
    try:
        out, family_row = video_summary(item.facts, item.frames, item.plans, rows, cfg, aggregate, faces)
    except VideoError as e:
        raise from_video_error(e) from None
    out["label"], out["reason"] = decide(out["score"], cfg, item.provenance)
    out.update(family_fields(out["label"], family_row, cfg))
    return {**out, **describe(cfg), "model": model, "provenance": item.provenance}
