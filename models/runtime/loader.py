"""Load a detector by what the user names: a folder, a store tag, or "default" (the shipped one).

    detector = load_detector()                         # the shipped detector, exported once
    detector = load_detector("/tmp/export", backend="onnx", device="cpu")

This is the one step above both the runtime (`models.runtime.detector`, which opens a folder)
and the export (`models.runtime.export`, which writes and verifies one with that runtime):
"default" is resolved here, making the shipped detector's verified export the first time a
non-eager backend asks for it (`ensure_export`), then the folder is opened. So neither the
runtime nor the export needs the other both ways.
"""

from __future__ import annotations

import sys
from pathlib import Path

from models.core import default_model
from models.runtime.detector import Detector, open_detector, resolve_device
from models.runtime.metadata import METADATA


def ensure_export(log_fn=None) -> Path:
    """The verified export of the default detector, made once per machine and version."""
    out = default_model.export_dir()
    if (out / METADATA).is_file():
        return out
    # Imported here for cost, not for a circle (export never imports this module; the layers
    # contract checks it): export pulls in timm and the exporters, which only the first
    # non-eager load of the default needs, never the service's front process.
    from models.runtime.export import ExportOptions, export_model

    say = log_fn or (lambda message: print(message, file=sys.stderr, flush=True))
    say(f"exporting the default detector once to {out} (ONNX, TorchScript, OpenVINO; about a minute)")
    out.parent.mkdir(parents=True, exist_ok=True)
    export_model(default_model.DEFAULT_DIR, out, ExportOptions(version=default_model.default_config().version), log=say)
    return out


def resolve_default(backend: str = "auto") -> Path:
    """Where the default detector is loaded from for `backend`: the shipped folder for eager,
    the cached export otherwise."""
    return default_model.DEFAULT_DIR if backend == "eager" else ensure_export()


def load_detector(source: str | Path | None = "default", backend: str = "auto", device: str = "auto") -> Detector:
    """Load a detector from a model/run/export folder, a model-store tag, or "default" (None):
    the detector that ships with fakelens (models/core/default_model.py)."""
    device = resolve_device(device)
    if default_model.is_default(source):
        source = resolve_default(backend)
    return open_detector(source, backend, device)
