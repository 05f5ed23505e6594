"""Turn one image's decode facts and calibrated probability into the JSON the API answers.

Also holds `prepare_upload`: models.prepare.prepare (the one decode-and-cut path, shared
with `fakelens score`) with bad input mapped to the HTTP error for it.
"""

from __future__ import annotations

from models.config import DetectorConfig
from models.prepare import Limits, Prepared, prepare
from models.preprocess import ImageError, ImageFacts
from models.verdict import describe, label_for
from service.errors import ServiceError, from_image_error


def prepare_upload(data: bytes, cfg: DetectorConfig, limits: Limits) -> Prepared:
    """models.prepare.prepare with bad input turned into the ServiceError (HTTP status) for it."""
    try:
        return prepare(data, cfg, limits)
    except ImageError as e:
        err = from_image_error(e)
        if e.kind == "too_large":
            err = type(err)(f"{err.message} (or raise FAKELENS_MAX_BYTES)", kind=e.kind)
        raise err from None


def image_facts(facts: ImageFacts) -> dict:
    out = {"format": facts.format, "width": facts.width, "height": facts.height, "frames": facts.frames}
    if facts.frames > 1:
        out["note"] = f"only the first of {facts.frames} frames/pages was scored"
    return out


def verdict(probability: float, facts: ImageFacts, cfg: DetectorConfig, model: dict) -> dict:
    score = float(probability)
    return {
        "label": label_for(score, cfg),
        "score": score,
        **describe(cfg),
        "model": model,
        "image": image_facts(facts),
    }


def item_error(err: ServiceError) -> dict:
    return {"error": err.to_dict()}
