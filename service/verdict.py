"""Turn one image's decode facts and calibrated probability into the JSON the API answers.

Also holds `prepare`, the per-upload work done before batching (size check, decode,
the detector's own eval views), so /detect and /detect_batch share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.config import DetectorConfig
from models.preprocess import ImageError, ImageFacts, decode_image, eval_views
from models.provenance import read_provenance
from models.verdict import decide, describe
from service.errors import PayloadTooLarge, ServiceError, from_image_error


@dataclass(frozen=True)
class Prepared:
    views: np.ndarray  # V x 3 x S x S float32, what the batched model method takes
    facts: ImageFacts
    provenance: dict | None = None  # models/provenance.py: C2PA, XMP, EXIF, generator text chunks


def decode_upload(data: bytes, max_bytes: int, max_pixels: int):
    """Size-check and decode one uploaded image -> (RGB image, facts); raises ServiceError for bad input."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the image is {len(data):,} bytes, above the limit of {max_bytes:,}; "
            "send a smaller file (or raise FAKELENS_MAX_BYTES)"
        )
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageError as e:
        raise from_image_error(e) from None


def prepare(data: bytes, cfg: DetectorConfig, max_bytes: int, max_pixels: int) -> Prepared:
    """Decode one upload and cut the model's views; raises ServiceError for bad input."""
    rgb, facts = decode_upload(data, max_bytes, max_pixels)
    return Prepared(views=eval_views(rgb, cfg.preprocess), facts=facts, provenance=read_provenance(data))


def image_facts(facts: ImageFacts) -> dict:
    out = {"format": facts.format, "width": facts.width, "height": facts.height, "frames": facts.frames}
    if facts.frames > 1:
        out["note"] = f"only the first of {facts.frames} frames/pages was scored"
    return out


def verdict(probability: float, facts: ImageFacts, cfg: DetectorConfig, model: dict,
            provenance: dict | None = None) -> dict:
    score = float(probability)
    label, reason = decide(score, cfg, provenance)
    out = {
        "label": label,
        "reason": reason,  # "model", or "declared" when the file's own metadata declares generative AI
        "score": score,
        **describe(cfg),
        "model": model,
        "image": image_facts(facts),
    }
    if provenance is not None:
        out["provenance"] = provenance
    return out


def item_error(err: ServiceError) -> dict:
    return {"error": err.to_dict()}
