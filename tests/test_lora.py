"""Backbone adaptation under the multi-block head: LoRA on attention and last-k blocks, trained by
the plain loop on images, stored beside the head (not the backbone), merged for serving."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from models.core import backbones
from models.core.atomic import file_sha256
from models.core.checkpoint import WEIGHTS, load_model_dir, save_model_dir
from models.core.lora import LoRALinear
from models.core.network import build_network
from models.runtime.loader import load_detector
from tests.conftest import TINY_VIT, tiny_config
from training.train import train
from training.train_config import TrainConfig

TAPS = dict(TINY_VIT, depth=3)


@pytest.fixture
def named_tiny_backbone(tmp_path, monkeypatch):
    """A tiny random ViT registered as named offline weights, like CLIP is (models/core/backbones.py)."""
    torch.manual_seed(1)
    path = tmp_path / "tiny-vit.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=1, **TAPS).state_dict(), str(path))
    spec = backbones.WeightsSpec(name="tiny-test", arch="vit_tiny_patch16_224", hub_tag="", mean=(0.5,) * 3,
                                 std=(0.5,) * 3, num_classes=1, fetch=lambda: path, sha256=file_sha256(path))
    monkeypatch.setitem(backbones.WEIGHTS, "tiny-test", spec)
    monkeypatch.setitem(backbones.ALIASES, "tiny-test", "tiny-test")
    return spec


def adapted_config(spec, **changes):
    cfg = dataclasses.replace(tiny_config(), model_kwargs=dict(TAPS, num_classes=1), head="blocks", blocks=(0, 1, 2),
                              head_dim=8, backbone_weights=spec.name, backbone_sha256=spec.sha256)
    return dataclasses.replace(cfg, **changes)


def test_lora_starts_at_the_pretrained_backbone_and_stores_only_what_it_adapts(named_tiny_backbone, tmp_path):
    spec = named_tiny_backbone
    x = torch.randn(3, 3, 32, 32)
    torch.manual_seed(0)
    frozen = build_network(adapted_config(spec)).eval()
    torch.manual_seed(0)
    cfg = adapted_config(spec, lora_rank=2, lora_alpha=4.0, lora_blocks=(1, 2), tuned_blocks=(2,))
    model = build_network(cfg).eval()
    with torch.inference_mode():
        torch.testing.assert_close(model.taps(x), frozen.taps(x))  # B = 0: the adapter adds nothing yet
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("blocks.1.attn.qkv.lora_a" in n for n in trainable)
    assert all(n.startswith("head.") or ".lora_" in n or ".blocks.2." in n for n in trainable)
    assert not any(".blocks.0." in n for n in trainable)
    with torch.no_grad():  # what training would do
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(std=0.5)
        model.taps.vit.blocks[2].mlp.fc1.weight.add_(0.1)
        model.head.out.weight.normal_()
    save_model_dir(tmp_path / "m", model, cfg)
    stored = load_file(str(tmp_path / "m" / WEIGHTS))
    assert any(".lora_b" in k for k in stored) and any(".blocks.2.mlp.fc1" in k for k in stored)
    assert not any(".blocks.0." in k or "patch_embed" in k for k in stored)  # the backbone stays out
    loaded, _ = load_model_dir(tmp_path / "m")
    assert not any(isinstance(m, LoRALinear) for m in loaded.modules())  # merged: plain linear layers
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(loaded.taps(x), frozen.taps(x), atol=1e-3)


def test_lora_trains_end_to_end_on_images_and_serves(named_tiny_backbone, demo, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKELENS_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(data=str(demo), out=str(tmp_path / "run"), model="tiny-test", pretrained=True, img_size=32,
                      model_kwargs=dict(TAPS),
                      head="blocks", head_dim=8, lora_rank=2, balance="source", epochs=1, batch_size=8, lr=3e-3,
                      device="cpu", progress=False, save_every=None, seed=0)
    result = train(cfg)
    _, saved = load_model_dir(result.best_dir)
    assert saved.lora_rank == 2 and saved.lora_blocks == (0, 1, 2)  # the last four of a 3-block model
    stored = load_file(str(result.best_dir / WEIGHTS))
    moved = [v for k, v in stored.items() if k.endswith("lora_b")]
    assert moved and any(float(v.abs().max()) > 0 for v in moved)  # the backbone really adapted
    assert not (tmp_path / "cache" / "features").exists()  # images, not a frozen-feature cache
    det = load_detector(result.best_dir, backend="eager", device="cpu")
    from models.core.preprocess import decode_image

    paths = sorted((demo / "real").rglob("*.png"))[:3]
    probs = det.probabilities([decode_image(p)[0] for p in paths])
    assert probs.shape == (3,) and np.isfinite(probs).all()


def test_lora_needs_the_blocks_head():
    with pytest.raises(ValueError, match="--head blocks"):
        TrainConfig(data="d", out="o", lora_rank=4)
