"""The one request path from uploaded bytes to model input: `prepare(bytes, config, limits)`.

    item = prepare(data, detector.config, Limits(max_bytes=20 * 2**20))
    probs = detector.probabilities_from_views([item.views])

Size check, decode (models.core.preprocess.decode_image), the detector's own eval views, and the
file's provenance (models/evidence/provenance.py, about 1 ms), in that order; bad input raises `ImageError` whose `kind` the caller maps to its own answer
(an HTTP status in service/errors.py, an `error` column in the scorer's rows). The HTTP
service and `fakelens score` both call this, so an image is cut the same way wherever it is
scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from models.core.config import DetectorConfig
from models.core.preprocess import DEFAULT_MAX_PIXELS, ImageError, ImageFacts, decode_image, eval_pixels
from models.evidence.provenance import read_provenance


@dataclass(frozen=True)
class Limits:
    """What one input may cost before it is refused: encoded bytes (None: unchecked) and pixels."""

    max_bytes: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or (self.max_bytes is not None and self.max_bytes < 1):
            raise ValueError(f"limits must be positive: max_bytes={self.max_bytes}, max_pixels={self.max_pixels}")


@dataclass(frozen=True)
class Prepared:
    views: np.ndarray | None  # V x S x S x 3 uint8 pixels (eval_pixels): 4x smaller than float32 across a
    # process hop; Detector.probabilities_from_views normalises them next to the model
    facts: ImageFacts
    provenance: dict | None = None  # models/evidence/provenance.py: C2PA, XMP, EXIF, generator text chunks
    jpeg: bytes | None = None  # instead of views: a JPEG the model process decodes (models/runtime/jpeg_decode.py)


def decode(data: bytes, limits: Limits = Limits()) -> tuple[Image.Image, ImageFacts]:
    """Size check and decode: the RGB image and its facts (face mode and heatmaps need the image itself)."""
    if limits.max_bytes is not None and len(data) > limits.max_bytes:
        raise ImageError(
            "too_large", f"the image is {len(data):,} bytes, above the limit of {limits.max_bytes:,}; send a smaller file"
        )
    return decode_image(data, max_pixels=limits.max_pixels)


def prepare(data: bytes, cfg: DetectorConfig, limits: Limits = Limits()) -> Prepared:
    """Decode one input, cut the model's views and read its provenance; raises ImageError for input
    that cannot be scored."""
    rgb, facts = decode(data, limits)
    return Prepared(views=eval_pixels(rgb, cfg.preprocess), facts=facts, provenance=read_provenance(data))
