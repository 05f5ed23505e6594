"""The scale policy (issue 17): a resized whole-picture view plus native views at the picture's
intrinsic scale, combined by a rule fitted on val, for every consumer (runtime, explain, faces)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from models.core.config import PreprocessConfig
from models.core.dataset import Sample
from models.core.network import build_network
from models.core.preprocess import aggregate_views, estimate_upscale, eval_pixels, image_views, plan_views
from models.evidence.explain import explain
from models.runtime.backends import ModuleBackend
from models.runtime.detector import Detector
from tests.conftest import tiny_config
from training.scale_rule import choose_native_weight, picture_logits

MULTI = dict(scales=("resized", "native"), undo_upscale=True)


def photo(side: int = 128) -> Image.Image:
    """A real photograph (scikit-image's astronaut), shrunk so it holds detail up to its Nyquist."""
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((side, side), Image.Resampling.LANCZOS)


def upscaled(img: Image.Image, k: int) -> Image.Image:
    """What people do to AI pictures before posting: a Lanczos enlargement, saved as JPEG q95."""
    big = img.resize((img.width * k, img.height * k), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=95)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_plan_views_resized_first_then_native_at_scale_one():
    pre = PreprocessConfig(img_size=224, **MULTI)
    small = plan_views(256, 256, pre)
    assert [(v.kind, v.scale) for v in small] == [("resized", 1.0)]  # nothing finer to see natively
    big = plan_views(1600, 1200, pre)
    assert [v.kind for v in big] == ["resized", "native"]
    assert big[0].scale == pytest.approx(256 / 1200) and big[1].scale == 1.0
    tiles = plan_views(1600, 1200, dataclasses.replace(pre, views="tiles", max_tiles=4))
    assert [v.kind for v in tiles] == ["resized"] + ["native"] * 4
    # an estimated 4x enlargement: the native view is taken at 1/4, which the resized view covers
    assert [v.kind for v in plan_views(1024, 1024, pre, upscale=4.0)] == ["resized"]
    # the policy of detectors trained before it: one native centre crop, whatever the size
    assert [(v.kind, v.scale) for v in plan_views(1600, 1200, PreprocessConfig())] == [("native", 1.0)]


def test_upscale_is_estimated_from_the_pixels():
    img = photo(160)
    assert estimate_upscale(img) == 1.0
    assert 1.5 <= estimate_upscale(upscaled(img, 2)) <= 2.5
    assert 3.0 <= estimate_upscale(upscaled(img, 4)) <= 5.0
    assert 4.0 <= estimate_upscale(upscaled(img, 6)) <= 8.0


def tiny_detector(**pre) -> Detector:
    torch.manual_seed(0)
    cfg = tiny_config(img_size=32, **MULTI, **pre)
    return Detector(cfg, ModuleBackend(build_network(cfg), "cpu"), "test")


def mean_level_change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


@pytest.mark.parametrize("k", [2, 4, 6])
def test_an_upscaled_picture_keeps_its_view_and_its_score(k):
    """A picture at the training scale (the shared datasets' 256 px, here 64), enlarged k times:
    the resized view shrinks it back and the native view, taken at 1/k, adds nothing new."""
    det = tiny_detector(resize_size=64)
    img, big = photo(64), upscaled(photo(64), k)
    base, up = eval_pixels(img, det.config.preprocess), eval_pixels(big, det.config.preprocess)
    assert len(base) == len(up) == 1
    assert mean_level_change(base, up) < 6  # JPEG and resampling noise only
    # without the policy the model would see a blurred close-up of another part of the picture
    legacy = dataclasses.replace(det.config.preprocess, scales=("native",), undo_upscale=False)
    assert mean_level_change(eval_pixels(img, legacy), eval_pixels(big, legacy)) > 10
    p_base, p_up = det.probabilities([img, big])
    assert abs(p_base - p_up) <= 0.05
    assert det.is_synthetic(np.array([p_base]))[0] == det.is_synthetic(np.array([p_up]))[0]


@pytest.mark.parametrize("k", [2, 4])
def test_native_views_of_an_enlargement_are_taken_at_the_picture_s_own_scale(k):
    det = tiny_detector(resize_size=40)
    img, big = photo(128), upscaled(photo(128), k)
    base, up = eval_pixels(img, det.config.preprocess), eval_pixels(big, det.config.preprocess)
    assert len(base) == len(up) == 2  # 128 px holds 3x more detail than the 40 px resized view
    assert mean_level_change(base, up) < 6


def test_a_large_picture_is_scored_through_both_views_by_the_fitted_rule():
    det = tiny_detector(resize_size=40, native_weight=0.75)
    cfg = det.config
    img = photo(200)
    views = eval_pixels(img, cfg.preprocess)
    assert [v.kind for v in image_views(img, cfg.preprocess)] == ["resized", "native"] and len(views) == 2
    from models.core.preprocess import normalize_views

    z = det.view_logits(normalize_views(torch.from_numpy(views), cfg.preprocess))
    assert det.logits([img])[0] == pytest.approx(0.25 * z[0] + 0.75 * z[1])
    assert aggregate_views(np.array([1.0, 3.0, 5.0]), [3], cfg.preprocess)[0] == pytest.approx(0.25 + 0.75 * 4)
    # the heat map covers both views and reports the same combined logit
    heat = explain(det, img, grid=2)
    assert heat.base_logit == pytest.approx(det.logits([img])[0], abs=1e-4)


def test_native_weight_is_chosen_on_pictures_with_both_views():
    rng = np.random.default_rng(0)
    samples, logits = [], []
    for i in range(60):
        label = i % 2
        samples.append(Sample(f"r/{i}.jpg", label, "src", split="val", picture=f"p{i}", view="resized"))
        logits.append(rng.normal())  # the resized view carries nothing here
        samples.append(Sample(f"n/{i}.jpg", label, "src", split="val", picture=f"p{i}", view="native"))
        logits.append(2.0 * label + rng.normal(scale=0.5))
    weight, table = choose_native_weight(samples, np.array(logits))
    assert weight == 1.0 and table["1"] > table["0"] + 0.3
    z, y, groups = picture_logits(samples, np.array(logits), weight)
    assert len(z) == 60 and sorted(set(y.tolist())) == [0, 1] and set(groups) == {"src"}
    # a synthetic twin shares its real's picture id but is a picture of its own
    twin = Sample("t/0.jpg", 1, "twins", split="val", picture="p0", view="resized")
    z2, y2, _ = picture_logits(samples + [twin], np.array(logits + [9.0]), weight)
    assert len(z2) == 61 and 9.0 in z2
