"""The one preprocessing definition: decode, orient, convert, crop/pad/tile, normalise.

Training (which adds augmentation before `crop_or_pad`), `fakelens evaluate`, the HTTP
service and the batch scorer all call these functions, so there is no train/serve skew.

Inference splits the work in two: `eval_pixels` cuts an image's views as raw pixels
(uint8, 4x smaller than float32) where it is decoded (service front, scorer workers), and
`normalize_views` turns a whole batch of them into the model's float32 input next to the
model (on its device). `eval_views` is both steps for one image; `normalize_views` gives
bit-identical values to training's per-view `normalize`.
"""

from __future__ import annotations

import io
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.core.config import PreprocessConfig

if TYPE_CHECKING:
    import torch

# Formats we decode. Anything else (SVG, HTML, PDF, archives, ...) is refused up front
# rather than handed to a plugin that was never meant to see untrusted uploads.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")  # MPO opens through JPEG
# Well below Pillow's own bomb limit (~179 MP): a 40 MP RGB image is already 120 MB raw.
DEFAULT_MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """An input that cannot be scored. `kind` is one of KINDS; the message says what to do."""

    KINDS = ("empty", "too_large", "not_image", "unsupported_format", "truncated", "too_many_pixels")

    def __init__(self, kind: str, message: str):
        assert kind in self.KINDS, kind
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImageFacts:
    format: str
    width: int
    height: int
    mode: str
    frames: int  # >1 for animated or multi-page files; only the first frame is scored


EXIF_ORIENTATION = 0x0112


# What Pillow's plugins raise on truncated or corrupt data, from Image.open as well as from load():
# each means "this file cannot be decoded", never a server fault.
DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)


def _truncated(fmt: str, e: BaseException) -> ImageError:
    return ImageError("truncated", f"the {fmt} data is truncated or corrupt ({e}); re-export or re-upload the file")


def _bomb(pixels: int | None, max_pixels: int) -> ImageError:
    """A refusal that quotes the configured limit and how to raise it (Pillow's own says "DOS attack")."""
    size = f"{pixels:,} pixels" if pixels else "more pixels than Pillow will open"
    return ImageError(
        "too_many_pixels",
        f"the image has {size}, above the limit of {max_pixels:,}; downscale it, or raise the limit "
        "(FAKELENS_MAX_PIXELS for the service, --max-pixels for fakelens score)",
    )


def _open(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    if not data:
        raise ImageError("empty", "the upload is empty (0 bytes); send the image file's bytes")
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        head = data[:64].lstrip().lower()
        hint = ""
        if head.startswith((b"<svg", b"<?xml", b"<!doctype", b"<html")):
            hint = " (it looks like SVG/HTML text; rasterise it to PNG first)"
        elif head.startswith((b"pk\x03\x04", b"\x1f\x8b", b"7z", b"rar!")):
            hint = " (it looks like an archive; send the images inside it)"
        raise ImageError(
            "not_image",
            f"the bytes are not a supported image{hint}; supported formats: {', '.join(ALLOWED_FORMATS)}",
        ) from None
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _bomb(int(found.group(1)) if found else None, max_pixels) from None
    except DECODER_ERRORS as e:
        # A recognised format whose header its plugin cannot read: a truncated WebP fails here
        # ("could not create decoder object"), before load() is ever reached.
        raise _truncated("image", e) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB (16-bit scaled, alpha and palette flattened)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit data: scale the full 0..65535 range; Pillow's own convert would clip at 255.
        arr = np.clip(arr / 257.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("P", "PA", "LA", "RGBA", "La", "RGBa"):
        img = img.convert("RGBA")
    return img.convert("RGB")


def decode_image(source: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, ImageFacts]:
    """Decode bytes or a file into an RGB image (EXIF-oriented, first frame) plus facts about it."""
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    img = _open(data, max_pixels)
    fmt = img.format or "unknown"
    width, height = img.size
    if width * height > max_pixels:
        raise _bomb(width * height, max_pixels)
    try:
        frames = int(getattr(img, "n_frames", 1) or 1)  # counting frames reads the whole file (GIF)
        img.seek(0)
        img.load()
        if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
            # exif_transpose copies the whole image even when there is nothing to turn: only call it
            # when the EXIF orientation asks for a turn (most uploads carry none)
            img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img)
    except Image.DecompressionBombError:
        raise _bomb(None, max_pixels) from None
    except DECODER_ERRORS as e:
        raise _truncated(fmt, e) from None
    facts = ImageFacts(format=fmt, width=width, height=height, mode=img.mode, frames=frames)
    return rgb, facts


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    if scale == 1:
        return img
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return img.resize(new, Image.Resampling.BICUBIC, reducing_gap=None)


def to_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8)


def crop_or_pad(arr, size: int, top: int | None = None, left: int | None = None):
    """Crop an HxWx3 uint8 array (numpy, or a torch tensor on any device: models/runtime/jpeg_decode.py)
    to size x size at (top, left) (centre by default).

    Sides shorter than `size` are padded symmetrically; the pad value is marked with -1 by
    returning an int16 array, which normalisation maps to 0 (the dataset mean).
    """
    h, w = arr.shape[:2]
    top = (h - size) // 2 if top is None else top
    left = (w - size) // 2 if left is None else left
    top, left = max(top, 0), max(left, 0)
    out = arr[top : top + size, left : left + size]
    ph, pw = size - out.shape[0], size - out.shape[1]
    if ph or pw:
        if isinstance(arr, np.ndarray):
            padded = np.full((size, size, 3), -1, dtype=np.int16)
        else:
            import torch

            padded = torch.full((size, size, 3), -1, dtype=torch.int16, device=arr.device)
        oy, ox = ph // 2, pw // 2
        padded[oy : oy + out.shape[0], ox : ox + out.shape[1]] = out
        return padded
    return out


def normalize(arr: np.ndarray, pre: PreprocessConfig) -> np.ndarray:
    """HxWx3 uint8 (or int16 with -1 = padding) -> 3xHxW float32, normalised; padding -> 0."""
    x = arr.astype(np.float32) / 255.0
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    y = (x - mean) / std
    if arr.dtype == np.int16:
        y[arr[..., 0] < 0] = 0.0
    return np.ascontiguousarray(y.transpose(2, 0, 1))


def tile_origins(length: int, size: int, max_count: int) -> list[int]:
    """Evenly spaced crop origins along one axis, covering it when max_count allows."""
    if length <= size:
        return [(length - size) // 2]
    count = min(math.ceil(length / size), max_count)
    if count == 1:
        return [(length - size) // 2]
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


@dataclass(frozen=True)
class View:
    """One model view of a picture: the picture scaled by `scale`, cut by `crop_or_pad` at (top, left)."""

    scale: float
    top: int
    left: int
    kind: str  # "resized" | "native"


# Upscale factors below this are left alone: camera and compression softness look like a mild one.
MIN_UPSCALE = 1.5
# A native view less than 1.5x sharper than the resized one shows little new: one forward pass will do.
SAME_SCALE = 1.5


def plan_views(width: int, height: int, pre: PreprocessConfig, upscale: float = 1.0) -> list[View]:
    """The scale policy: which views the model sees of a width x height picture, resized first.

    `upscale` is the picture's estimated upscale factor (`estimate_upscale`); with
    `pre.undo_upscale` the native views are taken at 1 / upscale, the picture's own resolution."""
    short = min(width, height)
    if pre.crop_mode == "resize":  # the legacy policy: the whole picture at the view size
        return _cut(width, height, pre.img_size / short, pre, "native")
    native = 1.0 / upscale if pre.undo_upscale and upscale >= MIN_UPSCALE else 1.0
    views = []
    if "resized" in pre.scales:
        resized = min(1.0, pre.resize_size / short)
        views = _cut(width, height, resized, pre, "resized", tiles=False)
        if "native" not in pre.scales or native <= resized * SAME_SCALE:
            return views
    return views + _cut(width, height, native, pre, "native")


def _cut(width: int, height: int, scale: float, pre: PreprocessConfig, kind: str, tiles: bool = True) -> list[View]:
    w, h = scaled_size(width, height, scale)
    origins = view_origins(h, w, pre) if tiles else [((h - pre.img_size) // 2, (w - pre.img_size) // 2)]
    return [View(scale, t, x, kind) for t, x in origins]


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    if scale == 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def needs_upscale_estimate(width: int, height: int, pre: PreprocessConfig) -> bool:
    """Only a picture whose native view could differ from its resized one needs the upscale estimate."""
    if not pre.undo_upscale or pre.crop_mode == "resize":
        return False
    return "resized" not in pre.scales or min(width, height) > pre.resize_size * SAME_SCALE


# Candidate upscale factors, tried by bisection (the detail a round trip loses grows with k).
UPSCALE_STEPS = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)


def _round_trip_loss(grey: Image.Image, k: float, blocks: bool = False) -> float:
    """Mean squared detail (8-bit levels) lost by shrinking by k and enlarging back (Lanczos both
    ways, or block means down for a whole k, as restore_intrinsic shrinks)."""
    side = grey.size[0]
    small = grey.reduce(int(k)) if blocks else grey.resize((max(8, round(side / k)),) * 2, Image.Resampling.LANCZOS)
    diff = np.asarray(grey, dtype=np.float32) - np.asarray(small.resize((side, side), Image.Resampling.LANCZOS))
    return float(np.mean(diff[8:-8, 8:-8] ** 2))


def estimate_upscale(img: Image.Image, side: int = 256) -> float:
    """How many times a picture was enlarged after it was made (1.0: not detectably).

    An enlarged picture holds no detail finer than its original pixels: shrinking it by the factor
    it was enlarged by and enlarging it back loses only compression noise, while one step further
    loses real detail. The loss is compared with what a 12x round trip loses (all of the
    picture's detail) plus half a grey level squared of codec noise. Measured on the shared
    datasets' native crops, Lanczos 2-6x enlargements are found within one step, and camera and
    generator originals come out as 1."""
    w, h = img.size
    side = min(side, w, h)
    if side < 64:
        return 1.0
    grey = img.convert("L").crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    grey = Image.fromarray(np.asarray(grey, dtype=np.float32), "F")
    budget = 0.5 + 0.015 * _round_trip_loss(grey, 12.0)
    lo, hi, found = 0, len(UPSCALE_STEPS) - 1, 1.0
    while lo <= hi:
        mid = (lo + hi) // 2
        if _round_trip_loss(grey, UPSCALE_STEPS[mid]) <= budget:
            found, lo = UPSCALE_STEPS[mid], mid + 1
        else:
            hi = mid - 1
    if found < 2:
        return found
    # A Lanczos round trip at the exact factor still loses a little, so the search can stop a step
    # short (6x read as 5x). Block means recover a whole enlargement almost exactly and miss badly
    # at a wrong factor: among the whole factors from the estimate up, take the one they fit best.
    start = math.floor(found)
    return float(min(range(start, min(8, start + 2) + 1), key=lambda m: _round_trip_loss(grey, m, blocks=True)))


def scaled_image(img: Image.Image, scale: float, pre: PreprocessConfig) -> Image.Image:
    if scale == 1.0:
        return img
    if pre.crop_mode == "resize":
        return resize_shorter(img, pre.img_size)
    # LANCZOS, as the shared datasets were shrunk: the resized view is what the model trained on.
    return img.resize(scaled_size(*img.size, scale), Image.Resampling.LANCZOS)


def restore_intrinsic(img: Image.Image, pre: PreprocessConfig) -> tuple[Image.Image, float]:
    """The picture shrunk back to its intrinsic scale when it was enlarged (`pre.undo_upscale`),
    and the factor applied (restored width / given width).

    An integer enlargement is undone by averaging k x k blocks: Lanczos and bicubic enlargements
    interpolate, so block means land near the original samples, where a Lanczos shrink would
    low-pass them a second time. Measured on 12 SD 1.5 / GAN test renders enlarged 2-6x (Lanczos,
    JPEG q95): block means keep every SD 1.5 score within 0.01 of the original; a Lanczos shrink
    lost up to 0.12 (0.999 -> 0.883) and turned a StyleGAN face from 0.94 to 0.25."""
    upscale = estimate_upscale(img) if needs_upscale_estimate(*img.size, pre) else 1.0
    if upscale < MIN_UPSCALE:
        return img, 1.0
    if float(upscale).is_integer():
        small = img.reduce(int(upscale))
    else:
        small = img.resize(scaled_size(*img.size, 1 / upscale), Image.Resampling.LANCZOS)
    return small, small.width / img.width


def image_views(img: Image.Image, pre: PreprocessConfig) -> list[View]:
    """The views of a decoded picture (`plan_views` of it at its intrinsic scale), with scales
    relative to the picture as given."""
    restored, factor = restore_intrinsic(img, pre)
    return [View(v.scale * factor, v.top, v.left, v.kind) for v in plan_views(*restored.size, pre)]


def eval_pixels(img: Image.Image, pre: PreprocessConfig) -> np.ndarray:
    """The model's view(s) of one decoded RGB image as pixels: V x S x S x 3, in `plan_views` order.

    uint8, or int16 with -1 marking padding when the image is smaller than a view (what
    `crop_or_pad` returns). This is what crosses process boundaries (service front ->
    model process, scorer decode workers -> main): 0.15 MB per 224 view instead of 0.6 MB.
    """
    restored, _ = restore_intrinsic(img, pre)
    arrays: dict[float, np.ndarray] = {}
    out = []
    for v in plan_views(*restored.size, pre):
        if v.scale not in arrays:
            arrays[v.scale] = to_array(scaled_image(restored, v.scale, pre))
        out.append(crop_or_pad(arrays[v.scale], pre.img_size, v.top, v.left))
    return np.stack(out)


def file_view(img: Image.Image, pre: PreprocessConfig) -> np.ndarray:
    """A file's own centre crop at the file's scale, normalised: 3 x S x S float32.

    What a training sample is: each dataset file already holds one view of a picture (a shrunk
    whole picture, or a native-resolution crop), and the scale policy that combines a picture's
    views is fitted on top of these."""
    if pre.crop_mode == "resize":
        img = resize_shorter(img, pre.img_size)
    return normalize(crop_or_pad(to_array(img), pre.img_size), pre)


def view_origins(height: int, width: int, pre: PreprocessConfig) -> list[tuple[int, int]]:
    """(top, left) of each native view of an image of this size, before `crop_or_pad` clamps them."""
    s = pre.img_size
    if pre.views == "center":
        return [((height - s) // 2, (width - s) // 2)]
    per_axis = max(1, math.isqrt(pre.max_tiles))
    return [(t, x) for t in tile_origins(height, s, per_axis) for x in tile_origins(width, s, per_axis)]


def normalize_views(pixels: torch.Tensor, pre: PreprocessConfig) -> torch.Tensor:
    """N x S x S x 3 pixel views (uint8, or int16 with -1 = padding) -> N x 3 x S x S float32.

    The batched, device-side twin of `normalize`: the same float32 operations in the same
    order (true divisions by tensors, not a fused multiply), so each view is bit-identical
    to `normalize` on it and training and serving see the same numbers.
    """
    import torch  # here, not at module top: decode-only processes (scorer workers) skip a 1.4 s import

    dev = pixels.device
    x = pixels.permute(0, 3, 1, 2).to(torch.float32)
    x = x / torch.tensor(255.0, device=dev)
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    y = (x - mean) / std
    if pixels.dtype != torch.uint8:
        y = y.masked_fill((pixels[..., 0] < 0)[:, None], 0.0)
    return y.contiguous()


def eval_views(img: Image.Image, pre: PreprocessConfig) -> np.ndarray:
    """The model's view(s) of one decoded RGB image, normalised: V x 3 x S x S float32."""
    import torch

    return normalize_views(torch.from_numpy(np.array(eval_pixels(img, pre))), pre).numpy()  # a writable copy


def aggregate_views(view_logits: np.ndarray, counts: list[int], pre: PreprocessConfig) -> np.ndarray:
    """Per-image logit from its views (`plan_views` order): with both scales,
    (1 - native_weight) * resized + native_weight * mean(native views); otherwise the mean. A
    picture that yielded one view (nothing finer to see natively) is that view's logit. Views x C
    outputs (the verdict logit, then family logits) combine column by column into images x C."""
    z = np.asarray(view_logits, dtype=np.float64)
    both = set(pre.scales) == {"resized", "native"} and pre.crop_mode == "crop"
    out = np.empty((len(counts), *z.shape[1:]), dtype=np.float64)
    start = 0
    for i, n in enumerate(counts):
        part = z[start : start + n]
        if both and n > 1:
            out[i] = (1 - pre.native_weight) * part[0] + pre.native_weight * part[1:].mean(axis=0)
        else:
            out[i] = part.mean(axis=0)
        start += n
    return out


def calibrated_probability(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    return 1.0 / (1.0 + np.exp(-z))
