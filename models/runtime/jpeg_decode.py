"""JPEG decoding next to the model: raw bytes in, the model's eval views out, on its device.

    item = prepare_raw(data, cfg, limits)          # front: header only, or the usual decode
    views = device_views([item.jpeg, ...], pre, "cuda")  # model process: nvJPEG, crop on GPU

On a GPU host the service's CPU front was the limit (docs/performance.md: about 5 ms of CPU
per image, of which Pillow decode and crop about 2 ms), while the GPU decodes a batch of
JPEGs 15x faster than 16 Pillow threads. So a front may send a JPEG's bytes instead of its
views, and the model process decodes the whole batch with `torchvision.io.decode_jpeg`
(nvJPEG on CUDA, libjpeg-turbo on CPU) and cuts the views with the same arithmetic as
`models.core.preprocess.eval_pixels`.

Only files whose decode both paths agree on take this route: baseline or progressive JPEG
in RGB or grayscale, no EXIF turn, a complete stream (ends with EOI), a preprocessing that
crops at native resolution (`crop_mode="resize"` resamples with Pillow's bicubic, which a
GPU would not reproduce). Everything else (PNG, WebP, CMYK, rotated, truncated) is decoded
in the front as before, so its answer and its error are unchanged. On CPU, libjpeg-turbo
under both Pillow and torchvision gives bit-identical pixels (tests/test_jpeg_decode.py);
nvJPEG's IDCT may differ by a level or two on some pixels.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from PIL import Image

from models.core.config import DetectorConfig, PreprocessConfig
from models.core.preprocess import (
    EXIF_ORIENTATION,
    ImageError,
    ImageFacts,
    crop_or_pad,
    needs_upscale_estimate,
    plan_views,
)
from models.evidence.provenance import read_provenance
from models.runtime.prepare import Limits, Prepared, prepare

if TYPE_CHECKING:
    import torch

JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
DEVICE_MODES = ("RGB", "L")  # what decode_jpeg(mode=RGB) turns into the same RGB as Pillow's convert


def raw_facts(data: bytes, cfg: DetectorConfig, limits: Limits) -> ImageFacts | None:
    """The facts of a JPEG the model process can decode as the front would, from its header; else None."""
    if not (data.startswith(JPEG_START) and data.endswith(JPEG_END)):
        return None
    if limits.max_bytes is not None and len(data) > limits.max_bytes:
        return None  # the usual path says why it is refused
    try:
        img = Image.open(io.BytesIO(data), formats=["JPEG"])
        width, height = img.size
        turned = img.getexif().get(EXIF_ORIENTATION, 1) != 1
        # MPO (several pictures in one file, as some phones write): the front path reports its frames
        single = img.format == "JPEG" and getattr(img, "n_frames", 1) == 1
    except Exception:  # any header Pillow cannot read: the usual path gives the error for it
        return None
    if not single or img.mode not in DEVICE_MODES or turned or width * height > limits.max_pixels:
        return None
    if not native_scale_only(width, height, cfg.preprocess):
        return None  # resampling (Pillow's) and the upscale estimate stay in the front
    return ImageFacts(format="JPEG", width=width, height=height, mode=img.mode, frames=1)


def native_scale_only(width: int, height: int, pre: PreprocessConfig) -> bool:
    """True when the scale policy cuts every view of this picture at scale 1 (nothing to resample)."""
    if needs_upscale_estimate(width, height, pre):
        return False
    return all(v.scale == 1.0 for v in plan_views(width, height, pre))


def undecodable() -> ImageError:
    """The error for a JPEG whose header read fine but whose stream did not decode on the device:
    what the Pillow path says of such a file."""
    return ImageError("truncated", "the JPEG data is truncated or corrupt; re-export or re-upload the file")


def prepare_raw(data: bytes, cfg: DetectorConfig, limits: Limits = Limits()) -> Prepared:
    """`models.runtime.prepare.prepare`, except that a JPEG the model process can decode keeps its bytes
    (`jpeg`, no `views`): the front reads only its header and provenance."""
    facts = raw_facts(data, cfg, limits)
    if facts is None:
        return prepare(data, cfg, limits)
    return Prepared(views=None, facts=facts, provenance=read_provenance(data), jpeg=data)


def cut_views(img: torch.Tensor, pre: PreprocessConfig) -> torch.Tensor:
    """`models.core.preprocess.eval_pixels` for a decoded H x W x 3 uint8 tensor: V x S x S x 3, with the
    same view origins and crop/pad (uint8 and padded int16 views stack to int16, as numpy's do)."""
    import torch  # here, not at the top: the scorer's decode workers run prepare_raw without torch

    height, width = img.shape[:2]
    return torch.stack([crop_or_pad(img, pre.img_size, v.top, v.left) for v in plan_views(width, height, pre)])


def _decode(blobs: Sequence[bytes], device: str) -> list[torch.Tensor | None]:
    """C x H x W uint8 per blob (None where it does not decode); one batched call when all do."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    with warnings.catch_warnings():
        # torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; they are
        # still the batched nvJPEG path that ships with torch
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one stream fails the batch: decode one by one to find it
            return [_decode_one(d, device) for d in data]


def _decode_one(data: torch.Tensor, device: str) -> torch.Tensor | None:
    """One stream on `device`, else with libjpeg-turbo on the CPU (a valid JPEG that nvJPEG does
    not support is still scored, as the front would); None only when neither decodes it."""
    from torchvision.io import ImageReadMode, decode_jpeg

    for where in (device, "cpu"):  # on a CPU model a bad stream is tried twice: rare, and cheap
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=where).to(device)
        except RuntimeError:
            continue
    return None


def device_views(blobs: Sequence[bytes], pre: PreprocessConfig, device: str) -> list[torch.Tensor | None]:
    """Each JPEG's eval views (V x S x S x 3 on `device`), None for a stream that does not decode."""
    return [None if img is None else cut_views(img.permute(1, 2, 0), pre) for img in _decode(blobs, device)]
