"""Shared fixtures: tiny random-weight models and small real image files. No network, no ../shared."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from models.core.checkpoint import save_model_dir
from models.core.config import AttributionConfig, DetectorConfig, PreprocessConfig
from models.core.network import build_network

# Two cores: keep each test process from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY_VIT = dict(depth=2, embed_dim=32, num_heads=2, patch_size=8)


def tiny_config(img_size: int = 32, **pre) -> DetectorConfig:
    return DetectorConfig(
        arch="vit_tiny_patch16_224",
        model_kwargs=dict(TINY_VIT),
        preprocess=PreprocessConfig(img_size=img_size, **pre),
        temperature=1.5,
        threshold=0.5,
        version="test",
    )


def write_images(folder, n: int, size=(40, 48), seed: int = 0, fmt: str = "PNG") -> list:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        p = folder / f"img_{i:03d}.{'jpg' if fmt == 'JPEG' else fmt.lower()}"
        Image.fromarray(arr).save(p, format=fmt)
        paths.append(p)
    return paths


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A model folder (model.safetensors + detector.json) with a tiny random-weight ViT."""
    torch.manual_seed(0)
    cfg = tiny_config()
    folder = tmp_path_factory.mktemp("tiny_ckpt")
    save_model_dir(folder, build_network(cfg), cfg)
    return folder


FAMILIES = ("alpha", "beta", "gamma")


def family_config(img_size: int = 32, min_confidence: float = 0.6, **pre) -> DetectorConfig:
    """A tiny "blocks" detector with a 3-family head (random weights), on the max-softmax open-set
    rule at `min_confidence`, so tests can reason in probabilities."""
    import dataclasses

    return dataclasses.replace(tiny_config(img_size, **pre), model_kwargs=dict(TINY_VIT), head="blocks",
                               blocks=(0, 1), head_dim=8, threshold=0.45,
                               attribution=AttributionConfig(FAMILIES, rule="max-softmax",
                                                             threshold=min_confidence))


@pytest.fixture(scope="session")
def family_checkpoint(tmp_path_factory):
    """A model folder whose network outputs the verdict logit and 3 family logits. The family
    head's weights are scaled up so random images get confident and unconfident families alike
    (both `unknown` and named answers occur)."""
    torch.manual_seed(0)
    cfg = family_config()
    model = build_network(cfg)
    with torch.no_grad():
        model.family_head.out.weight.normal_(0, 0.3)
        model.head.out.weight.normal_(0, 1.0)
    folder = tmp_path_factory.mktemp("family_ckpt")
    save_model_dir(folder, model, cfg)
    return folder


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """60 images of the built-in demo dataset (folder layout + manifest.csv); read-only."""
    from training.demo_data import write_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    write_demo_dataset(root, n=60, seed=0)
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """A folder of small PNG and JPEG images of different sizes."""
    root = tmp_path_factory.mktemp("images")
    write_images(root / "png", 4, size=(40, 48), seed=1)
    write_images(root / "jpg", 4, size=(64, 30), seed=2, fmt="JPEG")
    return root
