"""Turn one image's decode facts and calibrated probability into the JSON the API answers.

Also holds `prepare`, the per-upload work done before batching (size check, decode,
the detector's own eval views), so /detect and /detect_batch share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.config import DetectorConfig
from models.preprocess import ImageError, ImageFacts, decode_image, eval_pixels
from models.verdict import describe, label_for
from service.errors import PayloadTooLarge, ServiceError, from_image_error


@dataclass(frozen=True)
class Prepared:
    views: np.ndarray  # V x S x S x 3 uint8 pixels (eval_pixels); the model process normalises them
    facts: ImageFacts


def prepare(data: bytes, cfg: DetectorConfig, max_bytes: int, max_pixels: int) -> Prepared:
    """Decode one upload and cut the model's views; raises ServiceError for bad input."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the image is {len(data):,} bytes, above the limit of {max_bytes:,}; "
            "send a smaller file (or raise FAKELENS_MAX_BYTES)"
        )
    try:
        rgb, facts = decode_image(data, max_pixels=max_pixels)
    except ImageError as e:
        raise from_image_error(e) from None
    return Prepared(views=eval_pixels(rgb, cfg.preprocess), facts=facts)


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
