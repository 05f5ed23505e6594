"""Heatmaps: occlusion relevance maps back onto the image, and finds a planted cue."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.core.checkpoint import save_model_dir
from models.core.config import PreprocessConfig
from models.core.network import build_network
from models.core.preprocess import eval_views
from models.evidence.explain import Heat, explain, occluded_views, overlay, relevance_map, view_offsets
from models.runtime.loader import load_detector
from tests.conftest import tiny_config

CUE = (slice(8, 16), slice(8, 16))  # rows, cols of the planted cue: cell (1, 1) of a 4 x 4 grid on 32 px


def cue_images(n: int, synthetic: bool, rng, size=(32, 32)) -> np.ndarray:
    """Mid-grey noise; `synthetic` ones carry a strong 1-px checkerboard in the CUE square only."""
    x = rng.integers(60, 196, size=(n, size[1], size[0], 3)).astype(np.int16)
    if synthetic:
        yy, xx = np.mgrid[0:8, 0:8]
        x[:, CUE[0], CUE[1], :] += (((yy + xx) % 2) * 100 - 50)[None, :, :, None]
    return np.clip(x, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def cue_detector(tmp_path_factory):
    """A tiny ViT trained for a few seconds to tell the cue from plain noise."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = tiny_config(img_size=32)
    net = build_network(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    y = torch.tensor([0.0] * 16 + [1.0] * 16)
    for _ in range(30):
        imgs = np.concatenate([cue_images(16, False, rng), cue_images(16, True, rng)])
        x = torch.from_numpy(np.stack([eval_views(Image.fromarray(a), cfg.preprocess)[0] for a in imgs]))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).reshape(-1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    folder = tmp_path_factory.mktemp("cue_model")
    save_model_dir(folder, net, cfg)
    return load_detector(folder, "eager", "cpu")


def test_heat_lands_on_the_planted_cue(cue_detector):
    rng = np.random.default_rng(1)
    for arr in cue_images(3, True, rng):
        heat = explain(cue_detector, Image.fromarray(arr), grid=4)
        assert heat.values.shape == (4, 4) and heat.cell_px == 8 and heat.origin == (0, 0)
        assert np.unravel_index(np.nanargmax(heat.values), heat.values.shape) == (1, 1)
        others = np.delete(heat.values.reshape(-1), 5)
        assert heat.values[1, 1] > 5 * np.abs(others).max()
    # In a larger image scored as tiles, the cue's cell is found in image coordinates.
    pre = PreprocessConfig(img_size=32, views="tiles", max_tiles=4)
    cue_detector = type(cue_detector)(config=tiny_config(img_size=32, views="tiles", max_tiles=4),
                                      backend=cue_detector.backend, source=cue_detector.source)
    big = rng.integers(60, 196, size=(48, 64, 3)).astype(np.uint8)
    big[16:48, 32:64] = cue_images(1, True, rng)[0]  # the cued 32 x 32 image in the bottom-right tile
    heat = explain(cue_detector, Image.fromarray(big), grid=4)
    assert pre.views == "tiles" and heat.values.shape == (6, 8)
    assert np.unravel_index(np.nanargmax(heat.values), heat.values.shape) == (3, 5)  # y 24-32, x 40-48


def test_occluded_views_hide_one_cell_each():
    views = np.ones((2, 3, 8, 8), np.float32)
    out = occluded_views(views, grid=2)
    assert out.shape == (8, 3, 8, 8)
    assert out[1, :, :4, 4:].sum() == 0 and out[1, :, 4:, :].min() == 1 and out[1, :, :4, :4].min() == 1
    assert out[6, :, 4:, :4].sum() == 0  # view 1, cell (1, 0)


def test_view_offsets_follow_eval_views_geometry():
    centre = PreprocessConfig(img_size=32)
    assert view_offsets(64, 48, centre) == [(8, 16)]
    assert view_offsets(20, 40, centre) == [(4, -6)]  # narrower than the view: padded, negative offset
    tiles = PreprocessConfig(img_size=32, views="tiles", max_tiles=4)
    assert view_offsets(64, 48, tiles) == [(0, 0), (0, 32), (16, 0), (16, 32)]


def test_relevance_map_of_a_padded_image_covers_only_real_pixels():
    pre = PreprocessConfig(img_size=32)
    img = Image.new("RGB", (20, 40))
    drops = np.zeros(16)
    drops[0] = 1.0  # top-left cell of the view: 6 px of padding then image columns 0..1
    heat = relevance_map(img, pre, [0.0], -drops, grid=4)
    assert heat.origin == (0, 4) and heat.values.shape == (4, 3)  # rows 4..35 seen, columns all 20
    assert heat.values[0, 0] > 0 and np.nansum(heat.values) > 0
    png = overlay(img, heat)
    assert png.size == (20, 40)


def test_overlay_is_capped_for_large_images():
    heat = Heat(values=np.array([[1.0, np.nan]]), origin=(0.0, 0.0), cell_px=1500.0,
                image_size=(3000, 1500), base_logit=0.0)
    png = overlay(Image.new("RGB", (3000, 1500)), heat)
    assert png.size == (1024, 512)
    arr = np.asarray(png)
    assert arr[:, :500].mean() > arr[:, 600:].mean()  # the relevant half is painted, the unseen half dimmed
    assert heat.to_dict()["values"] == [[1.0, None]]
