"""Helpers shared by the export/runtime/store tests (not fixtures: each module builds what it needs)."""

from __future__ import annotations

import shutil
from pathlib import Path

from models.core.config import DetectorConfig
from models.runtime.export import ExportOptions, export_model


def export_tiny(checkpoint: Path, out: Path, **options) -> Path:
    export_model(checkpoint, out, ExportOptions(**options), log=lambda _: None)
    return out


def copy_with_config(checkpoint: Path, dest: Path, **changes) -> Path:
    """A copy of a model folder whose detector.json has `preprocess` fields changed."""
    import dataclasses

    shutil.copytree(checkpoint, dest)
    cfg = DetectorConfig.load(dest / "detector.json")
    cfg = dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, **changes))
    cfg.save(dest / "detector.json")
    return dest


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))
