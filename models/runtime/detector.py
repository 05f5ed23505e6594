"""The detector at run time: one callable detector for every consumer, whatever the backend.

    detector = open_detector("/tmp/export")            # or a run/checkpoint folder, or a store tag
    probs = detector.probabilities(list_of_pil_images)

Consumers call `models.runtime.loader.load_detector`, which also resolves "default" (the
shipped detector, exported once) and then opens the folder here. Backends register under a
name (`eager`, ...); `open_detector(..., backend=name)` builds any of them and an unknown name
raises with the valid list. A backend only has to turn a normalised float32 batch
(N x 3 x S x S) into N x C outputs (the verdict logit, then family logits); normalisation of
pixel views, view averaging, temperature and threshold are applied here, identically for all
of them. This module reads export folders
(their files and metadata.json) but never makes one: export and int8 quantisation import it
to verify what they wrote, never the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from models.core.attribution import aggregate_outputs, score_rows
from models.core.config import DetectorConfig
from models.core.preprocess import calibrated_probability, eval_pixels, normalize_views
from models.core.verdict import is_flagged
from models.runtime.backends import SPECS, BackendSpec
from models.runtime.jpeg_decode import device_views
from models.runtime.metadata import INT8_FILES, is_export_dir, offered_int8_backend, read_metadata
from models.runtime.store import model_path


class Backend(Protocol):
    name: str
    device: str

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        """N x 3 x S x S normalised float32 -> N x C raw outputs (float32/64 numpy): the verdict
        logit, then one logit per family when the detector has a family head."""
        ...


# name -> BackendSpec; calling one loads it: BACKENDS[name](folder, cfg, device) -> Backend
BACKENDS: dict[str, BackendSpec] = {}


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

    def view_outputs(self, batch: torch.Tensor) -> np.ndarray:
        """N x C raw outputs of N normalised views: the verdict logit, then the family logits."""
        out = np.asarray(self.backend(batch), dtype=np.float64)
        return out.reshape(len(batch), -1)

    def view_logits(self, batch: torch.Tensor) -> np.ndarray:
        return self.view_outputs(batch)[:, 0]

    def outputs_from_views(self, views: Sequence[np.ndarray]) -> np.ndarray:
        """Per-image raw outputs (N x C) from already-cut views, run as one batch and combined over
        each image's views (the scale policy). Each item is one image's views either as pixels
        (`eval_pixels`: V x S x S x 3 uint8/int16, what the service and the scorer send) or already
        normalised (`eval_views`: V x 3 x S x S float32). Pixels are normalised here, on the
        backend's input device, so only a quarter of the bytes cross process and host-device
        boundaries."""
        if not views:
            return np.zeros((0, self.config.outputs))
        counts = [len(v) for v in views]
        integer = [np.issubdtype(v.dtype, np.integer) for v in views]
        device = getattr(self.backend, "input_device", "cpu")
        if all(integer):
            # uint8 and int16 (padded) items concatenate to int16; -1 stays the padding mark
            pixels = torch.from_numpy(np.concatenate(views))
            batch = normalize_views(pixels.to(device, non_blocking=True), self.config.preprocess)
        elif not any(integer):
            batch = torch.from_numpy(np.concatenate([np.asarray(v, dtype=np.float32) for v in views]))
        else:  # the scorer mixes image pixels with face/video views cut as floats: normalise per item
            pre = self.config.preprocess
            batch = torch.cat([normalize_views(torch.from_numpy(np.array(v)), pre) if is_int
                               else torch.from_numpy(np.asarray(v, dtype=np.float32))
                               for v, is_int in zip(views, integer, strict=True)])
        return aggregate_outputs(self.view_outputs(batch), counts, self.config)

    def logits_from_views(self, views: Sequence[np.ndarray]) -> np.ndarray:
        """Per-image raw verdict logits (column 0 of `outputs_from_views`)."""
        return self.outputs_from_views(views)[:, 0]

    def scores_from_views(self, views: Sequence[np.ndarray]) -> np.ndarray:
        """Per-image score rows (N x C): calibrated probability synthetic, then the family logits
        (models/core/attribution.py)."""
        return score_rows(self.outputs_from_views(views), self.config)

    def probabilities_from_views(self, views: Sequence[np.ndarray]) -> np.ndarray:
        return self.scores_from_views(views)[:, 0]

    def scores_from_jpegs(self, blobs: Sequence[bytes]) -> np.ndarray:
        """Score rows of raw JPEG files decoded on the backend's input device (nvJPEG on CUDA:
        models/runtime/jpeg_decode.py); a row of NaN for a file that does not decode."""
        out = np.full((len(blobs), self.config.outputs), np.nan)
        views = device_views(blobs, self.config.preprocess, getattr(self.backend, "input_device", "cpu"))
        ok = [i for i, v in enumerate(views) if v is not None]
        if ok:
            kept = [views[i] for i in ok]  # uint8 and padded int16 items cat to int16: -1 stays the mark
            batch = normalize_views(torch.cat(kept), self.config.preprocess)
            outputs = aggregate_outputs(self.view_outputs(batch), [len(v) for v in kept], self.config)
            out[ok] = score_rows(outputs, self.config)
        return out

    def probabilities_from_jpegs(self, blobs: Sequence[bytes]) -> np.ndarray:
        return self.scores_from_jpegs(blobs)[:, 0]

    def outputs(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Raw per-image outputs (N x C) of decoded images, combined over each image's views."""
        return self.outputs_from_views([eval_pixels(img, self.config.preprocess) for img in images])

    def logits(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Raw (uncalibrated) per-image logits, combined over each image's views (the scale policy)."""
        return self.outputs(images)[:, 0]

    def scores(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Score rows (N x C) of decoded images: probability synthetic, then the family logits."""
        return score_rows(self.outputs(images), self.config)

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Calibrated probability that each image is synthetic."""
        return calibrated_probability(self.logits(images), self.config.temperature)

    def is_synthetic(self, probabilities: np.ndarray) -> np.ndarray:
        return is_flagged(probabilities, self.config)

    @property
    def info(self) -> dict[str, str]:
        return {
            "name": self.config.name,
            "version": self.config.version,
            "arch": self.config.arch,
            "backend": self.backend.name,
            "device": self.backend.device,
        }


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Add a runtime (one row of models.runtime.backends.SPECS) to the registry."""
    BACKENDS[spec.name] = spec
    return spec


for _spec in SPECS.values():  # the project's runtimes, registered explicitly (not on import of backends)
    register_backend(_spec)


def is_store_tag(source: str | Path) -> bool:
    """`name:version` (e.g. fakelens-detector:latest) that is not an existing path."""
    text = str(source)
    return ":" in text and "/" not in text and not Path(text).exists()


def locate(source: str | Path) -> tuple[Path, DetectorConfig]:
    """Find the model folder and its config for a path (model, run or export folder) or a store tag."""
    from models.core.checkpoint import CONFIG, find_model_dir  # timm: only once a detector is loaded

    if is_store_tag(source):
        source = model_path(str(source))
    path = Path(source)
    if path.is_dir() and is_export_dir(path):
        if not (path / CONFIG).is_file():
            raise FileNotFoundError(f"{path} is an export folder without {CONFIG}; re-run `fakelens export`")
        read_metadata(path)  # raises with a clear message when metadata.json is missing or torn
        return path, DetectorConfig.load(path / CONFIG)
    folder = find_model_dir(path)
    return folder, DetectorConfig.load(folder / CONFIG)


def default_backend(folder: Path, device: str, int8: bool = True) -> str:
    """The best-ranked backend (BackendSpec.auto_rank) whose artifact `folder` holds and that can run here.

    A spec that does not reject exports on a parity failure (OpenVINO, whose bf16 depends on
    the CPU) is picked only where the export recorded its parity as passed; any runtime the
    export's validation (`--data`) marked as not offered (FPR drift at the threshold) is skipped.
    Before all of them on CPU: static int8, where the export's int8 gate recorded that it keeps
    the verdicts and is faster than the float default (models/runtime/quantize.py records it in
    metadata.json; `int8=False` skips it).
    """
    if int8 and device == "cpu" and any((folder / f).is_file() for f in INT8_FILES.values()):
        offered = offered_int8_backend(read_metadata(folder))
        if offered is not None and (folder / INT8_FILES[offered]).is_file():
            return offered
    ranked = sorted((s for s in BACKENDS.values() if device in s.auto_rank), key=lambda s: s.auto_rank[device])
    meta = None
    for spec in ranked:
        if not (folder / spec.artifact).is_file() or (spec.available and not spec.available(device)):
            continue
        if spec.is_export:
            meta = read_metadata(folder) if meta is None else meta
            # Measured on validation images at export (--data): a runtime whose verdicts drift is not offered.
            if ((meta.get("validation") or {}).get(spec.name) or {}).get("offered", True) is not True:
                continue
            parity = meta.get("parity") if isinstance(meta.get("parity"), dict) else {}
            if not spec.rejects_export and (parity.get(spec.name) or {}).get("passed") is not True:
                continue
        return spec.name
    raise FileNotFoundError(
        f"{folder} holds no file any backend can load on {device} "
        f"({', '.join(sorted({s.artifact for s in ranked}))}); re-run `fakelens export` or point at a run folder"
    )


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
    if out.size != 2 * cfg.outputs or not np.all(np.isfinite(out)):
        raise ValueError(
            f"backend {backend.name!r} on {source} returned {out.shape} (non-finite or wrong count) for a "
            f"batch of 2; detector.json says {cfg.outputs} output(s) per image (the verdict logit and "
            f"{len(cfg.attribution.families)} families): the model file and detector.json come from "
            "different exports: re-run `fakelens export`"
        )


def open_detector(source: str | Path, backend: str = "auto", device: str = "auto") -> Detector:
    """Open a detector from a model/run/export folder or a model-store tag (not "default":
    `models.runtime.loader.load_detector` resolves that first)."""
    device = resolve_device(device)
    folder, cfg = locate(source)
    name = default_backend(folder, device) if backend == "auto" else backend
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)} or 'auto'")
    spec = BACKENDS[name]
    if device not in spec.devices:
        raise ValueError(f"backend {name!r} runs on {', '.join(spec.devices)}, not {device}; "
                         f"choose another backend or device")
    loaded = spec(folder, cfg, device)
    warm_up(loaded, cfg, folder)
    return Detector(config=cfg, backend=loaded, source=str(folder))
