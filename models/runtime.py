"""The runtime loader: one callable detector for every consumer, whatever the backend.

    detector = load_detector("/tmp/export")            # or a run/checkpoint folder, or a store tag
    probs = detector.probabilities(list_of_pil_images)

Backends register under a name (`eager`, ...); `load_detector(..., backend=name)` builds
any of them and an unknown name raises with the valid list. A backend only has to turn
a normalised float32 batch (N x 3 x S x S) into N logits; view averaging, temperature
and threshold are applied here, identically for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from models.config import DetectorConfig
from models.preprocess import average_views, batch_views, calibrated_probability


class Backend(Protocol):
    name: str
    device: str

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        """N x 3 x S x S normalised float32 -> N raw logits (float32/64 numpy)."""
        ...


# name -> factory(model_source: Path, cfg: DetectorConfig, device: str) -> Backend
BACKENDS: dict[str, Callable[[Path, DetectorConfig, str], Backend]] = {}


def register_backend(name: str):
    def deco(factory):
        BACKENDS[name] = factory
        return factory

    return deco


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}; choose one of 'auto', 'cpu', 'cuda'")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA device is visible; use 'cpu' or 'auto'")
    return device


@dataclass
class Detector:
    """A loaded detector: preprocessing + backend + calibration."""

    config: DetectorConfig
    backend: Backend
    source: str

    def view_logits(self, batch: torch.Tensor) -> np.ndarray:
        return np.asarray(self.backend(batch), dtype=np.float64).reshape(-1)

    def logits(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Raw (uncalibrated) per-image logits, averaged over each image's views."""
        if not images:
            return np.zeros(0)
        batch, counts = batch_views(list(images), self.config.preprocess)
        return average_views(self.view_logits(batch), counts)

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Calibrated probability that each image is synthetic."""
        return calibrated_probability(self.logits(images), self.config.temperature)

    def is_synthetic(self, probabilities: np.ndarray) -> np.ndarray:
        return np.asarray(probabilities) >= self.config.threshold

    @property
    def info(self) -> dict[str, str]:
        return {
            "name": self.config.name,
            "version": self.config.version,
            "arch": self.config.arch,
            "backend": self.backend.name,
            "device": self.backend.device,
        }


class ModuleBackend:
    """A live PyTorch module (training's validation passes use this on the model in memory)."""

    name = "eager"

    def __init__(self, model: torch.nn.Module, device: str = "cpu"):
        self.model = model
        self.device = device

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model(batch.to(self.device, non_blocking=True))
        finally:
            self.model.train(was_training)
        return out.float().reshape(-1).cpu().numpy()


@register_backend("eager")
def eager_backend(source: Path, cfg: DetectorConfig, device: str) -> ModuleBackend:
    """The PyTorch model from a checkpoint folder (model.safetensors + detector.json)."""
    from models.checkpoint import load_model_dir

    model, _ = load_model_dir(source)
    return ModuleBackend(model.to(device), device)


def locate(source: str | Path) -> tuple[Path, DetectorConfig]:
    """Find the model folder and its config for a path (model, run or export folder)."""
    from models.checkpoint import CONFIG, find_model_dir

    path = Path(source)
    folder = find_model_dir(path)
    return folder, DetectorConfig.load(folder / CONFIG)


def default_backend(folder: Path, device: str) -> str:
    return "eager"


def load_detector(source: str | Path, backend: str = "auto", device: str = "auto") -> Detector:
    """Load a detector from a model/run/export folder or a model-store tag."""
    device = resolve_device(device)
    folder, cfg = locate(source)
    name = default_backend(folder, device) if backend == "auto" else backend
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)} or 'auto'")
    return Detector(config=cfg, backend=BACKENDS[name](folder, cfg, device), source=str(folder))
