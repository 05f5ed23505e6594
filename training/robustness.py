"""Perturbations for the robustness grid of `fakelens evaluate`: each a PIL -> PIL function.

They mimic what happens to images on the way to a detector (re-compression, resizing,
smoothing). Each is applied to the decoded RGB image, before the model's own
preprocessing, to real and synthetic images identically, so a drop in AUC measures
the detector's reliance on fragile high-frequency traces, not a labelling artefact.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from PIL import Image, ImageFilter


def jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def apply(img: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        out = Image.open(buf)
        out.load()
        return out.convert("RGB")

    return apply


def downscale(factor: float) -> Callable[[Image.Image], Image.Image]:
    def apply(img: Image.Image) -> Image.Image:
        w, h = img.size
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        return img.resize(size, Image.Resampling.BICUBIC)

    return apply


def gaussian_blur(sigma: float) -> Callable[[Image.Image], Image.Image]:
    # Pillow's GaussianBlur radius is the kernel's standard deviation.
    def apply(img: Image.Image) -> Image.Image:
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))

    return apply


PERTURBATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg_q95": jpeg(95),
    "jpeg_q75": jpeg(75),
    "jpeg_q50": jpeg(50),
    "downscale_0.5": downscale(0.5),
    "blur_sigma1": gaussian_blur(1.0),
}
