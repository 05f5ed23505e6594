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

from models import backends as _backends
from models.config import DetectorConfig
from models.preprocess import average_views, calibrated_probability, eval_views


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

    def logits_from_views(self, views: Sequence[np.ndarray]) -> np.ndarray:
        """Per-image raw logits from already-cut views (one V x 3 x S x S array per image),
        run as one batch and averaged over each image's views. The service and the scorer
        cut views in their decode workers and call this on the model side."""
        if not views:
            return np.zeros(0)
        batch = torch.from_numpy(np.concatenate(views))
        return average_views(self.view_logits(batch), [len(v) for v in views])

    def probabilities_from_views(self, views: Sequence[np.ndarray]) -> np.ndarray:
        return calibrated_probability(self.logits_from_views(views), self.config.temperature)

    def logits(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Raw (uncalibrated) per-image logits, averaged over each image's views."""
        return self.logits_from_views([eval_views(img, self.config.preprocess) for img in images])

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
    from models.checkpoint import WEIGHTS, load_model_dir

    if not (Path(source) / WEIGHTS).is_file() and (Path(source) / "model.onnx").is_file():
        raise ValueError(
            f"{source} is an export folder: it holds no PyTorch weights for backend 'eager'; "
            f"use backend 'onnx', 'openvino' or 'torchscript', or point at the training run folder"
        )
    model, _ = load_model_dir(source)
    return ModuleBackend(model.to(device), device)


# Exported runtimes (models/backends.py), registered by name here rather than on import.
register_backend("torchscript")(_backends.torchscript_backend)
register_backend("onnx")(_backends.onnx_backend)
register_backend("onnx-int8")(_backends.onnx_int8_backend)
register_backend("onnx-fp16")(_backends.onnx_fp16_backend)
register_backend("openvino")(_backends.openvino_backend)
register_backend("openvino-fp32")(_backends.openvino_fp32_backend)


def is_store_tag(source: str | Path) -> bool:
    """`name:version` (e.g. fakelens-detector:latest) that is not an existing path."""
    text = str(source)
    return ":" in text and "/" not in text and not Path(text).exists()


def locate(source: str | Path) -> tuple[Path, DetectorConfig]:
    """Find the model folder and its config for a path (model, run or export folder) or a store tag."""
    from models.checkpoint import CONFIG, find_model_dir
    from models.metadata import is_export_dir, read_metadata

    if is_store_tag(source):
        from models.store import model_path

        source = model_path(str(source))
    path = Path(source)
    if path.is_dir() and is_export_dir(path):
        if not (path / CONFIG).is_file():
            raise FileNotFoundError(f"{path} is an export folder without {CONFIG}; re-run `fakelens export`")
        read_metadata(path)  # raises with a clear message when metadata.json is missing or torn
        return path, DetectorConfig.load(path / CONFIG)
    folder = find_model_dir(path)
    return folder, DetectorConfig.load(folder / CONFIG)


def default_backend(folder: Path, device: str) -> str:
    """The fastest backend that passed parity for this model (docs/performance-runtimes.md).

    CPU: OpenVINO (bf16 on AMX CPUs) when the export's parity check recorded it within its
    bound, else ONNX Runtime fp32. GPU: ORT fp16 when exported and onnxruntime-gpu is
    present, else TorchScript fp16. A checkpoint folder without an export runs eagerly.
    """
    from models.metadata import ONNX_FILE, ONNX_FP16_FILE, read_metadata

    if not (folder / ONNX_FILE).is_file():
        return "torchscript" if (device == "cuda" and (folder / _backends.TORCHSCRIPT_FILE).is_file()) else "eager"
    if device == "cuda":
        import onnxruntime as ort

        has_cuda_ort = "CUDAExecutionProvider" in ort.get_available_providers()
        return "onnx-fp16" if has_cuda_ort and (folder / ONNX_FP16_FILE).is_file() else "torchscript"
    meta = read_metadata(folder)
    parity = meta.get("parity", {})
    openvino_ok = isinstance(parity, dict) and parity.get("openvino", {}).get("passed") is True
    # Measured on validation images at export (--data): a runtime whose verdicts drift is not offered.
    validation = meta.get("validation") or {}
    openvino_ok = openvino_ok and validation.get("openvino", {}).get("offered", True)
    return "openvino" if openvino_ok else "onnx"


def warm_up(backend: Backend, cfg: DetectorConfig, source: Path) -> None:
    """Run one dummy batch of the configured size so a broken artifact fails at load, not at the first request."""
    size = cfg.preprocess.img_size
    try:
        out = np.asarray(backend(torch.zeros(2, 3, size, size)))
    except Exception as e:  # every runtime has its own error types; the message is what matters
        raise ValueError(
            f"backend {backend.name!r} cannot run {source} on a 2 x 3 x {size} x {size} batch "
            f"(img_size from detector.json): {str(e)[:300]}"
        ) from None
    if out.size != 2 or not np.all(np.isfinite(out)):
        raise ValueError(
            f"backend {backend.name!r} on {source} returned {out.shape} (non-finite or wrong count) for a "
            "batch of 2; the model must output one logit per image: re-run `fakelens export`"
        )


def load_detector(source: str | Path | None = "default", backend: str = "auto", device: str = "auto") -> Detector:
    """Load a detector from a model/run/export folder, a model-store tag, or "default" (None):
    the detector that ships with fakelens (models/default_model.py)."""
    from models import default_model

    device = resolve_device(device)
    if default_model.is_default(source):
        source = default_model.resolve(backend)
    folder, cfg = locate(source)
    name = default_backend(folder, device) if backend == "auto" else backend
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)} or 'auto'")
    loaded = BACKENDS[name](folder, cfg, device)
    warm_up(loaded, cfg, folder)
    return Detector(config=cfg, backend=loaded, source=str(folder))
