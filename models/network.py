"""One door to the network: a timm backbone with a single logit (positive = synthetic)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from models.config import DetectorConfig


def build_network(cfg: DetectorConfig, pretrained: bool = False, pretrained_file: str | Path | None = None) -> torch.nn.Module:
    """Create the timm model for `cfg`.

    pretrained=True loads timm's published weights (from the hub when online);
    `pretrained_file` loads a local weights file through timm's own loader
    (`pretrained_cfg_overlay=dict(file=...)`), so classifier replacement and ViT
    position-embedding resampling behave exactly as for hub weights.
    """
    if not timm.is_model(cfg.arch):
        raise ValueError(
            f"unknown timm model {cfg.arch!r}; see timm.list_models(), e.g. 'vit_small_patch16_224', 'efficientnet_lite0'"
        )
    kwargs = dict(cfg.model_kwargs)
    kwargs["num_classes"] = 1
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file {path} does not exist")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
        pretrained = True
    try:
        # ViTs and other fixed-size models need the input size at construction.
        return timm.create_model(cfg.arch, pretrained=pretrained, img_size=cfg.preprocess.img_size, **kwargs)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
        return timm.create_model(cfg.arch, pretrained=pretrained, **kwargs)
