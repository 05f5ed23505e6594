"""Run checkpoints: RUN/last/ and RUN/best/, each a model folder plus train_state.pt.

A checkpoint is written whole into a hidden temp folder beside its final place, then
swapped in with models.core.atomic.replace_dir, so a kill -9 at any moment leaves either the
previous checkpoint or the new one (resolve_dir finds whichever survived).

train_state.pt holds what a resumed run needs to continue bit-for-bit: optimizer,
scheduler, AMP scaler and EMA states, the position in the data (epoch, next batch),
the step, the best metric so far, and the python/numpy/torch RNG states. It is read
with torch.load(weights_only=True), so it holds only tensors and plain containers.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.core.atomic import replace_dir, resolve_dir
from models.core.checkpoint import WEIGHTS, save_model_dir
from models.core.config import DetectorConfig

TRAIN_STATE = "train_state.pt"


def capture_rng() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"], "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"], "has_gauss": n["has_gauss"], "gauss": n["gauss"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    # random.setstate needs tuples all the way down; serialisation may hand back lists.
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def save_checkpoint(run_dir: Path, name: str, model: torch.nn.Module, det_cfg: DetectorConfig,
                    state: dict[str, Any]) -> Path:
    """Write RUN/<name>/ (model.safetensors, detector.json, train_state.pt) atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob(f".{name}.tmp-*"):  # left by a run killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{name}.tmp-"))
    try:
        save_model_dir(tmp, model, det_cfg)
        torch.save(state, tmp / TRAIN_STATE)
        _fsync_tree(tmp)
        final = run_dir / name
        replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_checkpoint(run_dir: Path, name: str = "last") -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]] | None:
    """(folder, model weights, train state) of RUN/<name>/, or None when there is none."""
    from safetensors.torch import load_file

    folder = resolve_dir(run_dir / name)
    if folder is None or not (folder / TRAIN_STATE).is_file():
        return None
    try:
        weights = load_file(str(folder / WEIGHTS))
        state = torch.load(folder / TRAIN_STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # torn or foreign files: say which one
        raise ValueError(f"cannot resume from {folder}: {type(e).__name__}: {e}") from None
    return folder, weights, state
