"""The on-disk model format shared by training, export and the eager runtime.

A model folder holds `model.safetensors` (weights only, safe to load from untrusted
places) and `detector.json` (the DetectorConfig). Training adds `train_state.pt`
beside them; a run folder holds `best/` and `last/` model folders.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.core.atomic import resolve_dir
from models.core.config import DetectorConfig
from models.core.lora import merge_lora
from models.core.network import FAMILY_PREFIX, HEAD_PREFIX, build_network, is_tuned

WEIGHTS = "model.safetensors"
CONFIG = "detector.json"


def head_only(cfg: DetectorConfig) -> bool:
    """A "blocks" model on named backbone weights stores only its head (a few MB, not 340)."""
    return cfg.head == "blocks" and bool(cfg.backbone_weights)


TAPS_PREFIX = "taps.vit."


def stored(key: str, cfg: DetectorConfig) -> bool:
    """What a head-only model folder keeps: the heads, and the backbone parameters training adapted."""
    if key.startswith((HEAD_PREFIX, FAMILY_PREFIX)):
        return True
    return key.startswith(TAPS_PREFIX) and is_tuned(key[len(TAPS_PREFIX):], cfg)


def model_state(model: torch.nn.Module, cfg: DetectorConfig) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if head_only(cfg):
        state = {k: v for k, v in state.items() if stored(k, cfg)}
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def load_weights(model: torch.nn.Module, cfg: DetectorConfig, state: dict[str, torch.Tensor], where: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if head_only(cfg):
        missing = [k for k in missing if stored(k, cfg)]
    if missing or unexpected:
        raise ValueError(
            f"{where} does not match {cfg.arch} {cfg.model_kwargs}: "
            f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )


def save_model_dir(folder: Path, model: torch.nn.Module, cfg: DetectorConfig) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = model_state(model, cfg)
    save_file(state, str(folder / WEIGHTS))
    cfg.save(folder / CONFIG)


def find_model_dir(path: str | Path) -> Path:
    """A model folder, given it or a run folder (prefers `best/`, then `last/`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if (path / CONFIG).is_file():
        return path
    for name in ("best", "last"):
        found = resolve_dir(path / name)
        if found is not None and (found / CONFIG).is_file():
            return found
    raise FileNotFoundError(f"{path} holds no model: expected {CONFIG} + {WEIGHTS}, or a run folder with best/ or last/")


def load_model_dir(path: str | Path) -> tuple[torch.nn.Module, DetectorConfig]:
    folder = find_model_dir(path)
    cfg = DetectorConfig.load(folder / CONFIG)
    model = build_network(cfg)
    try:
        state = load_file(str(folder / WEIGHTS))
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder / WEIGHTS} is missing") from None
    except Exception as e:  # safetensors raises its own error types for torn files
        raise ValueError(f"{folder / WEIGHTS} is corrupt or truncated: {e}") from None
    load_weights(model, cfg, state, str(folder / WEIGHTS))
    return merge_lora(model).eval(), cfg
