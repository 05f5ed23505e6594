"""JPEG decoded next to the model (models/runtime/jpeg_decode.py): the same views and scores as the front's Pillow path."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from models.core.preprocess import EXIF_ORIENTATION, decode_image, eval_pixels
from models.runtime.jpeg_decode import device_views, prepare_raw, raw_facts
from models.runtime.loader import load_detector
from models.runtime.prepare import Limits, prepare
from tests.conftest import tiny_config
from tests.media_helpers import jpeg_bytes


def _photo(size, seed=0, mode="RGB", **save) -> bytes:
    """A smooth, photo-like JPEG (noise would make every decoder agree trivially on flat blocks)."""
    h, w = size[1], size[0]
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    arr = np.stack([(x * 3 + y) % 256, (y * 5) % 256, (x * y // 7) % 256], -1).astype(np.float64)
    arr = np.clip(arr + rng.normal(0, 12, arr.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88, **save)
    return buf.getvalue()


CASES = {
    "center crop": (tiny_config(), _photo((64, 48))),
    "smaller than a view (padded)": (tiny_config(), _photo((20, 40))),
    "tiles": (tiny_config(views="tiles", max_tiles=9), _photo((90, 70))),
    "tiles, one axis padded": (tiny_config(views="tiles", max_tiles=4), _photo((80, 24))),
    "grayscale": (tiny_config(), _photo((50, 40), mode="L")),
    "progressive, 4:2:0": (tiny_config(), _photo((64, 64), progressive=True, subsampling=2)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_device_views_match_the_front_pixels_exactly(case):
    cfg, data = CASES[case]
    front = eval_pixels(decode_image(data)[0], cfg.preprocess)
    [views] = device_views([data], cfg.preprocess, "cpu")
    assert views.dtype.is_floating_point is False
    np.testing.assert_array_equal(views.numpy(), front)  # libjpeg-turbo under both: bit-identical


def test_raw_route_only_for_jpegs_both_paths_decode_alike():
    cfg, limits = tiny_config(), Limits(max_bytes=10**6)
    ok = _photo((40, 40))
    assert raw_facts(ok, cfg, limits).mode == "RGB"
    item = prepare_raw(ok, cfg, limits)
    assert item.jpeg == ok and item.views is None and item.facts == prepare(ok, cfg, limits).facts

    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    refused = {
        "png": _png(),
        "cmyk": _photo((40, 40), mode="CMYK"),
        "rotated by EXIF": _photo((40, 40), exif=exif.tobytes()),
        "truncated": ok[: len(ok) // 2],
    }
    refused["mpo (two pictures)"] = _mpo()
    for name, data in refused.items():
        assert raw_facts(data, cfg, limits) is None, name
    assert raw_facts(ok, tiny_config(crop_mode="resize"), limits) is None  # Pillow's bicubic is not reproduced
    assert raw_facts(ok, cfg, Limits(max_pixels=1000)) is None  # over the limit: the front says why
    assert prepare_raw(refused["png"], cfg, limits).views is not None  # decoded in the front as before


def _mpo() -> bytes:
    buf = io.BytesIO()
    first, second = Image.new("RGB", (40, 40), (200, 10, 10)), Image.new("RGB", (40, 40), (10, 10, 200))
    first.save(buf, format="MPO", save_all=True, append_images=[second])
    return buf.getvalue()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (9, 99, 199)).save(buf, format="PNG")
    return buf.getvalue()


def test_detector_scores_jpegs_as_it_scores_their_views(tiny_checkpoint):
    det = load_detector(tiny_checkpoint, backend="eager", device="cpu")
    blobs = [jpeg_bytes((64, 48), seed=s) for s in range(3)] + [_photo((20, 40))]
    broken = blobs[0][:200] + b"\x00" * 64 + b"\xff\xd9"  # a JPEG start, garbage, an end marker
    probs = det.probabilities_from_jpegs([blobs[0], broken, *blobs[1:]])
    ref = det.probabilities_from_views([eval_pixels(decode_image(b)[0], det.config.preprocess) for b in blobs])
    assert np.isnan(probs[1])  # does not decode: NaN, and only for that file
    np.testing.assert_allclose(np.delete(probs, 1), ref, rtol=0, atol=1e-6)


def test_a_stream_the_device_refuses_is_decoded_on_the_cpu(monkeypatch):
    """nvJPEG does not take every valid JPEG: such a file falls back to libjpeg-turbo, not to an error."""
    import torchvision.io

    real, calls = torchvision.io.decode_jpeg, []

    def device_refuses(data, mode, device):
        calls.append("batch" if isinstance(data, list) else "one")
        if len(calls) <= 2:  # the batched call and the stream's first try (on the model's device) fail
            raise RuntimeError("nvjpeg: unsupported stream")
        return real(data, mode=mode, device=device)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", device_refuses)
    cfg, data = CASES["center crop"]
    [views] = device_views([data], cfg.preprocess, "cpu")
    assert calls == ["batch", "one", "one"]  # then the CPU decoded it
    np.testing.assert_array_equal(views.numpy(), eval_pixels(decode_image(data)[0], cfg.preprocess))
