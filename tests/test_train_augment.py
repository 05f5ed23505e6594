"""Training views: native-resolution random crops through the shared crop_or_pad + normalize."""

from __future__ import annotations

import numpy as np
from PIL import Image

from models.core.config import PreprocessConfig
from training.augment import AugmentConfig, train_view

PRE = PreprocessConfig(img_size=16, mean=(0, 0, 0), std=(1, 1, 1))
PLAIN = AugmentConfig(jpeg_prob=0.0, blur_prob=0.0, hflip=False)


def _img(h=40, w=30, seed=0):
    return np.random.default_rng(seed).integers(1, 255, (h, w, 3), dtype=np.uint8)


def test_crop_is_an_unresampled_window_of_the_image():
    arr = _img()
    view = train_view(Image.fromarray(arr), PRE, PLAIN, np.random.default_rng(3))
    assert view.shape == (3, 16, 16) and view.dtype == np.float32
    window = np.round(view.transpose(1, 2, 0) * 255).astype(np.uint8)
    hits = [(t, x) for t in range(40 - 15) for x in range(30 - 15) if np.array_equal(arr[t : t + 16, x : x + 16], window)]
    assert len(hits) == 1


def test_small_images_are_padded_not_resized():
    arr = _img(10, 12)
    view = train_view(Image.fromarray(arr), PRE, PLAIN, np.random.default_rng(0))
    assert view.shape == (3, 16, 16)
    np.testing.assert_allclose(view[:, 3:13, 2:14].transpose(1, 2, 0), arr / 255.0, rtol=1e-6)
    assert np.all(view[:, :3] == 0) and np.all(view[:, :, :2] == 0)


def test_views_are_a_function_of_the_rng_and_degradations_apply():
    img = Image.fromarray(_img(64, 64))
    aug = AugmentConfig(jpeg_prob=0.5, blur_prob=0.5)
    a = train_view(img, PRE, aug, np.random.default_rng([1, 2, 3]))
    b = train_view(img, PRE, aug, np.random.default_rng([1, 2, 3]))
    np.testing.assert_array_equal(a, b)
    rng_seed = [4, 5]
    clean = train_view(img, PRE, PLAIN, np.random.default_rng(rng_seed))
    jpeg = train_view(img, PRE, AugmentConfig(jpeg_prob=1.0, blur_prob=0.0, hflip=False), np.random.default_rng(rng_seed))
    assert np.abs(clean - jpeg).mean() > 0.01


def test_resize_mode_scales_the_shorter_side():
    arr = _img(64, 32)
    pre = PreprocessConfig(img_size=16, crop_mode="resize", mean=(0, 0, 0), std=(1, 1, 1))
    view = train_view(Image.fromarray(arr), pre, PLAIN, np.random.default_rng(0))
    assert view.shape == (3, 16, 16) and view.min() > 0  # no padding: the image was scaled down to fit
