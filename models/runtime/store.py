"""The BentoML model store for exported detectors: register, look up by tag, list.

A stored model `fakelens-detector:<version>` holds the export folder's files (model.onnx,
model.torchscript.pt, metadata.json, detector.json, optional variants) under its
`model.path`, so `load_detector("fakelens-detector:latest")` runs it like the folder.
The store lives under $BENTOML_HOME (default ~/bentoml); `bentoml models list` shows it too.
bentoml is imported inside the functions: it reads BENTOML_HOME at import time and is slow to import.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from models.runtime.metadata import read_metadata

DEFAULT_NAME = "fakelens-detector"


def _labels(meta: dict[str, Any]) -> dict[str, str]:
    """Short string labels for filtering (`bentoml models list` shows them)."""
    metrics = meta.get("metrics") or {}
    auc = metrics.get("val_auc", (metrics.get("val") or {}).get("auc", metrics.get("auc")))
    return {
        "arch": str(meta.get("arch", "")),
        "img_size": str(meta.get("preprocess", {}).get("img_size", "")),
        "exporter": str(meta.get("exporter", "")),
        "val_auc": "" if auc is None else f"{float(auc):.4f}",
        "data_fingerprint": str(meta.get("data_fingerprint", "")),
        "families": ",".join((meta.get("attribution") or {}).get("families") or []),
    }


def _store_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """BentoML metadata must be plain JSON values; keep the facts a reader of the store needs."""
    keep = ("version", "arch", "model_kwargs", "preprocess", "temperature", "threshold", "target_fpr",
            "metrics", "data_fingerprint", "export_time", "opset", "exporter", "weights_sha256", "files",
            "parity", "variants", "attribution", "output")
    return _no_none(json.loads(json.dumps({k: meta[k] for k in keep if k in meta})))


def _no_none(value: Any) -> Any:
    """BentoML refuses None in metadata: an unmeasured value is stored as ""."""
    if isinstance(value, dict):
        return {k: _no_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_none(v) for v in value]
    return "" if value is None else value


def register(export_dir: str | Path, log=print) -> str:
    """Copy an export folder into the store as `<name>:<version>`; returns the tag.

    Registering the same weights again is a no-op; a different model under an existing tag
    is refused (versions are immutable once published)."""
    import bentoml
    from bentoml.exceptions import NotFound

    export_dir = Path(export_dir)
    meta = read_metadata(export_dir)
    tag = f"{meta.get('name') or DEFAULT_NAME}:{meta['version']}"
    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        existing = None
    if existing is not None:
        if existing.info.metadata.get("weights_sha256") == meta.get("weights_sha256"):
            log(f"{tag} is already in the store with the same weights ({existing.path})")
            return str(existing.tag)
        raise ValueError(
            f"{tag} is already in the store with different weights; export with --version NEW "
            f"or remove it with `bentoml models delete {tag}`"
        )
    with bentoml.models.create(tag, labels=_labels(meta), metadata=_store_metadata(meta)) as model:
        for item in sorted(export_dir.iterdir()):
            if item.is_file():
                shutil.copy2(item, model.path_of(item.name))
    stored = bentoml.models.get(model.tag)  # model.path above was a staging folder
    log(f"registered {stored.tag} in the BentoML store at {stored.path}")
    return str(stored.tag)


def model_path(tag: str) -> Path:
    """The stored folder for a tag such as `fakelens-detector:latest` or `fakelens-detector:<version>`."""
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    try:
        return Path(bentoml.models.get(tag).path)
    except NotFound:
        known = [str(m.tag) for m in bentoml.models.list()]
        raise FileNotFoundError(
            f"model {tag!r} is not in the BentoML store ({_home()}); stored models: {known or 'none'}. "
            "Register one with `fakelens export CHECKPOINT --out EXP`"
        ) from None
    except BentoMLException as e:  # malformed tag
        raise ValueError(f"{tag!r} is not a model-store tag ({e}); use NAME:VERSION or NAME:latest") from None


def _home() -> str:
    return os.environ.get("BENTOML_HOME") or str(Path("~/bentoml").expanduser())


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def list_models(name: str = DEFAULT_NAME) -> list[dict[str, Any]]:
    """Stored detectors, newest first."""
    import bentoml

    rows = []
    for m in bentoml.models.list(name):
        rows.append({
            "tag": str(m.tag), "created": m.info.creation_time.strftime("%Y-%m-%d %H:%M:%S"),
            "size_mb": round(_size(Path(m.path)) / 1e6, 1), "labels": dict(m.info.labels),
        })
    return sorted(rows, key=lambda r: r["created"], reverse=True)


def show(tag: str) -> dict[str, Any]:
    """Everything the store knows about one model: tag, path, labels, metadata.json."""
    import bentoml

    path = model_path(tag)
    model = bentoml.models.get(tag)
    return {"tag": str(model.tag), "path": str(path), "labels": dict(model.info.labels),
            "files": sorted(p.name for p in path.iterdir() if p.is_file()), "metadata": read_metadata(path)}
