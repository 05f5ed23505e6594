"""Training-time views of an image: degrade, flip, crop, then the shared crop_or_pad + normalize.

Both classes go through exactly the same random choices, so augmentation cannot become a
label shortcut. JPEG re-compression and blur teach the detector to survive what images go
through on the web; cropping at native resolution (the default) keeps the generator's
high-frequency fingerprint that resizing would smooth away. Evaluation uses
`models.core.preprocess.eval_views` (centre crop) with the same PreprocessConfig.

All randomness comes from the `rng` argument, so a view is a pure function of
(image, seed, epoch, index): the data order and augmentation replay exactly on resume,
whatever the number of loader workers.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from models.core.config import PreprocessConfig
from models.core.preprocess import crop_or_pad, normalize, resize_shorter, to_array


@dataclass(frozen=True)
class AugmentConfig:
    jpeg_prob: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 100)
    blur_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    hflip: bool = True
    # Random downscale before the crop, and sensor-like Gaussian noise: both move images along
    # the smoothness axis that separates the shared datasets' reals and fakes for reasons that
    # have nothing to do with generation (../shared/notes/shortcuts.md), for both classes alike.
    downscale_prob: float = 0.0
    downscale_range: tuple[float, float] = (0.5, 1.0)
    noise_prob: float = 0.0
    noise_sigma: tuple[float, float] = (1.0, 6.0)


def jpeg_recompress(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def degrade(img: Image.Image, aug: AugmentConfig, rng: np.random.Generator) -> Image.Image:
    # Draw every random number whether or not it is used, so one choice never shifts the next.
    do_jpeg, do_blur = rng.random() < aug.jpeg_prob, rng.random() < aug.blur_prob
    quality = rng.integers(aug.jpeg_quality[0], aug.jpeg_quality[1] + 1)
    sigma = rng.uniform(*aug.blur_sigma)
    if do_blur:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(sigma)))
    if do_jpeg:
        img = jpeg_recompress(img, int(quality))
    return img


def rescale_and_noise(img: Image.Image, aug: AugmentConfig, rng: np.random.Generator, min_side: int) -> Image.Image:
    # Drawn only when enabled, so configs without these options replay their old sequences.
    if aug.downscale_prob > 0:
        do, factor = rng.random() < aug.downscale_prob, rng.uniform(*aug.downscale_range)
        # Never below the crop size: padding would add an edge no real upload has.
        factor = max(factor, min_side / max(1, min(img.size)))
        if do and factor < 1:
            w, h = img.size
            img = img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BICUBIC)
    if aug.noise_prob > 0:
        do, sigma = rng.random() < aug.noise_prob, rng.uniform(*aug.noise_sigma)
        if do:
            arr = np.asarray(img, dtype=np.float32)
            noise = rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(sigma)
            img = Image.fromarray(np.clip(arr + noise, 0, 255).round().astype(np.uint8))
    return img


def random_crop(arr: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A size x size crop at a random position; sides shorter than size are padded (centred)."""
    h, w = arr.shape[:2]
    top = int(rng.integers(0, max(h - size, 0) + 1))
    left = int(rng.integers(0, max(w - size, 0) + 1))
    return crop_or_pad(arr, size, top if h > size else None, left if w > size else None)


def train_view(img: Image.Image, pre: PreprocessConfig, aug: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """One augmented training view: 3 x S x S float32, normalised like eval_views."""
    img = rescale_and_noise(img, aug, rng, pre.img_size)
    img = degrade(img, aug, rng)
    if pre.crop_mode == "resize":
        img = resize_shorter(img, pre.img_size)
    arr = to_array(img)
    flip = aug.hflip and rng.random() < 0.5
    if flip:
        arr = arr[:, ::-1]
    return normalize(random_crop(arr, pre.img_size, rng), pre)
