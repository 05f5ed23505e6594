"""Turn one image's decode facts and score row into the JSON the API answers.

A score row is [calibrated probability synthetic, family logits...] (models/core/
attribution.py); a bare probability is a row without families. The answer carries the verdict
(`label`, `score`) and, beside it, `family` and `family_score` (models/evidence/families.py:
attributed on the final label; null for `real`, "unknown" when the open-set rule fires).
Attribution never changes the verdict.

Also holds `prepare_upload`: models.runtime.prepare.prepare (the one decode-and-cut path, shared
with `fakelens score`) with bad input mapped to the HTTP error for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from models.core.config import DetectorConfig
from models.core.preprocess import ImageError, ImageFacts
from models.core.verdict import decide, describe
from models.evidence.families import as_row, family_fields
from models.runtime.prepare import Limits, Prepared, decode, prepare
from service.errors import ServiceError, from_image_error


def _service_errors(fn, *args):
    """Call fn with bad input (ImageError) turned into the ServiceError (HTTP status) for it."""
    try:
        return fn(*args)
    except ImageError as e:
        err = from_image_error(e)
        if e.kind == "too_large":
            err = type(err)(f"{err.message} (or raise FAKELENS_MAX_BYTES)", kind=e.kind)
        raise err from None


def prepare_upload(data: bytes, cfg: DetectorConfig, limits: Limits, raw_jpeg: bool = False) -> Prepared:
    """models.runtime.prepare.prepare with bad input turned into the ServiceError (HTTP status) for it;
    raw_jpeg: a JPEG the model process can decode keeps its bytes instead (models/runtime/jpeg_decode.py)."""
    if raw_jpeg:
        from models.runtime.jpeg_decode import prepare_raw

        return _service_errors(prepare_raw, data, cfg, limits)
    return _service_errors(prepare, data, cfg, limits)


def decode_upload(data: bytes, limits: Limits):
    """models.runtime.prepare.decode (size check + decode -> RGB image, facts) with ServiceErrors."""
    return _service_errors(decode, data, limits)


def image_facts(facts: ImageFacts) -> dict:
    out = {"format": facts.format, "width": facts.width, "height": facts.height, "frames": facts.frames}
    if facts.frames > 1:
        out["note"] = f"only the first of {facts.frames} frames/pages was scored"
    return out


def verdict(row: float | Sequence[float], facts: ImageFacts, cfg: DetectorConfig, model: dict,
            provenance: dict | None = None) -> dict:
    """The answer for one picture from its score row (or bare probability)."""
    row = as_row(row)
    score = row[0]
    label, reason = decide(score, cfg, provenance)
    out = {
        "label": label,
        "reason": reason,  # "model", or "declared" when the file's own metadata declares generative AI
        "score": score,
        **family_fields(label, row, cfg),  # attributed on the final label: null for real
        **describe(cfg),
        "model": model,
        "image": image_facts(facts),
    }
    if provenance is not None:
        out["provenance"] = provenance
    return out


def item_error(err: ServiceError) -> dict:
    return {"error": err.to_dict()}
