"""The shared foundation: config round-trip, preprocessing policy, eager runtime."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from models.core.config import DetectorConfig, PreprocessConfig
from models.core.preprocess import ImageError, decode_image, eval_views
from models.runtime.loader import load_detector
from tests.conftest import tiny_config


def test_config_roundtrip(tmp_path):
    cfg = tiny_config()
    cfg.save(tmp_path / "d.json")
    assert DetectorConfig.load(tmp_path / "d.json") == cfg


def test_config_rejects_unknown_crop_mode():
    with pytest.raises(ValueError, match="crop_mode"):
        PreprocessConfig(crop_mode="squash")


def test_center_crop_keeps_native_pixels_and_pads_small_images():
    pre = PreprocessConfig(img_size=8, mean=(0, 0, 0), std=(1, 1, 1))
    arr = np.random.default_rng(0).integers(1, 255, (12, 12, 3), dtype=np.uint8)
    view = eval_views(Image.fromarray(arr), pre)[0]
    # centre 8x8 of the 12x12 image, unresampled
    np.testing.assert_allclose(view.transpose(1, 2, 0), arr[2:10, 2:10] / 255.0, rtol=1e-6)
    small = eval_views(Image.fromarray(arr[:4, :4]), pre)[0]
    assert small.shape == (3, 8, 8)
    assert np.all(small[:, :2, :] == 0) and np.all(small[:, 6:, :] == 0)  # padding = mean
    np.testing.assert_allclose(small[:, 2:6, 2:6].transpose(1, 2, 0), arr[:4, :4] / 255.0, rtol=1e-6)


def test_tiles_cover_large_image():
    pre = PreprocessConfig(img_size=16, views="tiles", max_tiles=9)
    views = eval_views(Image.new("RGB", (40, 20)), pre)
    assert views.shape == (6, 3, 16, 16)  # 3 across x 2 down


def test_decode_16bit_grayscale_scales_full_range():
    arr = np.full((8, 8), 65535, dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    img, facts = decode_image(buf.getvalue())
    assert img.mode == "RGB" and np.asarray(img).min() == 255 and facts.format == "PNG"


@pytest.mark.parametrize(
    "data,kind",
    [(b"", "empty"), (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "not_image"), (b"PK\x03\x04zz", "not_image")],
)
def test_decode_rejects_non_images(data, kind):
    with pytest.raises(ImageError) as e:
        decode_image(data)
    assert e.value.kind == kind


def test_decode_rejects_truncated_jpeg():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    with pytest.raises(ImageError) as e:
        decode_image(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert e.value.kind == "truncated"


def test_decode_pixel_limit():
    buf = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buf, "PNG")
    with pytest.raises(ImageError) as e:
        decode_image(buf.getvalue(), max_pixels=5_000)
    assert e.value.kind == "too_many_pixels"


def test_eager_runtime_scores_and_calibrates(tiny_checkpoint, image_folder):
    det = load_detector(tiny_checkpoint, backend="eager", device="cpu")
    images = [decode_image(p)[0] for p in sorted(image_folder.rglob("*.png"))]
    logits = det.logits(images)
    probs = det.probabilities(images)
    assert logits.shape == (4,)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits / det.config.temperature)))


def test_unknown_backend_lists_choices(tiny_checkpoint):
    with pytest.raises(ValueError, match="eager"):
        load_detector(tiny_checkpoint, backend="tensorrt")


@pytest.mark.parametrize("side", [12, 5])  # cropped (uint8 pixels) and padded (int16, -1 = padding)
def test_pixel_views_normalise_bit_identically_to_training(side):
    """The service/scorer send uint8 pixels and normalise next to the model: same numbers as training's
    per-view `normalize` (no train/serve skew), and 4x fewer bytes than float32 views."""
    from models.core.preprocess import crop_or_pad, eval_pixels, normalize, tile_origins

    pre = PreprocessConfig(img_size=8, views="tiles", max_tiles=4)
    arr = np.random.default_rng(1).integers(0, 256, (side, side + 7, 3), dtype=np.uint8)
    pixels = eval_pixels(Image.fromarray(arr), pre)
    assert pixels.dtype == (np.uint8 if side >= 8 else np.int16) and pixels.shape[1:] == (8, 8, 3)
    origins = [(t, x) for t in tile_origins(side, 8, 2) for x in tile_origins(side + 7, 8, 2)]
    expected = np.stack([normalize(crop_or_pad(arr, 8, t, x), pre) for t, x in origins])
    np.testing.assert_array_equal(eval_views(Image.fromarray(arr), pre), expected)


def test_detector_scores_pixel_and_float_views_alike(tiny_checkpoint):
    from models.core.preprocess import eval_pixels

    det = load_detector(tiny_checkpoint, "eager", "cpu")
    pre = det.config.preprocess
    rng = np.random.default_rng(2)
    imgs = [Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)) for s in (40, 9, 33)]
    pixels = [eval_pixels(im, pre) for im in imgs]
    floats = [eval_views(im, pre) for im in imgs]
    np.testing.assert_array_equal(det.probabilities_from_views(pixels), det.probabilities_from_views(floats))
    mixed = det.probabilities_from_views([pixels[0], floats[1], pixels[2]])  # the scorer mixes them
    np.testing.assert_array_equal(mixed, det.probabilities_from_views(floats))


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_decode_turns_by_exif_orientation_only_when_asked(orientation):
    from PIL import ImageOps

    pixels = np.random.default_rng(orientation).integers(0, 256, (36, 48, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", exif=exif)
    img, facts = decode_image(buf.getvalue())
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert img.size == ((36, 48) if orientation in (6, 8) else (48, 36)) and (facts.width, facts.height) == (48, 36)
    assert np.array_equal(np.asarray(img), np.asarray(expected))
    if orientation == 1:
        assert np.array_equal(np.asarray(img), pixels)
