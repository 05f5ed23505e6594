"""Cached backbone features for a frozen-backbone ("blocks") detector: the input pipeline.

A frozen backbone gives the same tokens for the same view every epoch, so each image's views
are run through it once: view 0 is the file's own centre crop (`file_view`: each dataset file
is one view of a picture, resized or native; the scale policy combines them), views 1..K are
augmented training views (`train_view`: downscale, noise, blur, JPEG,
random crop, flip), each a pure function of (seed, view, image). An epoch over the cache then
takes seconds and the training loop in training/train.py only ever sees the head.

The cache lives in `FAKELENS_CACHE/features/<key>/` where the key hashes everything that
changes a feature (backbone identity, tapped blocks, crop size and normalisation, augmentation,
seed); not the scale policy's rule, which is fitted on top of these features.
It is written in shards, each made atomically, so an interrupted extraction resumes where it
stopped and never reads a torn shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from models.core.clip_weights import cache_dir
from models.core.config import DetectorConfig
from models.core.dataset import Sample
from models.core.preprocess import decode_image, file_view
from training.augment import AugmentConfig, train_view

log = logging.getLogger("fakelens.train")
SHARD_ROWS = 64


def sample_key(s: Sample) -> str:
    """Identifies an image's bytes cheaply: its last four path parts and its size. Four, because
    datasets that hold two views of one picture repeat `<source>/<name>` (realfake-native and its
    parents, realfake-families' resized/ and native/), and a key must never serve the other view."""
    p = Path(s.path)
    return f"{'/'.join(p.parts[-4:])}:{p.stat().st_size}"


def cache_key(det_cfg: DetectorConfig, aug: AugmentConfig, seed: int, salt: str = "") -> str:
    """What a cached feature depends on. Not the number of views: view v is the same whatever K,
    so runs with more views extend the same cache."""
    ident = {
        "arch": det_cfg.arch, "model_kwargs": det_cfg.model_kwargs, "blocks": det_cfg.blocks,
        "weights": [det_cfg.backbone_weights, det_cfg.backbone_sha256], "preprocess": view_fields(det_cfg.preprocess),
        "aug": asdict(aug), "seed": seed, "salt": salt,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def view_fields(pre) -> dict:
    """The preprocessing fields a cached view depends on. A cached view is one file's centre crop
    (or an augmented crop) at the file's own scale; how the service later combines views of a
    picture (its scale policy) is fitted on these features and must not invalidate them."""
    return {k: getattr(pre, k) for k in ("img_size", "crop_mode", "mean", "std")}


def view_of(img, det_cfg: DetectorConfig, aug: AugmentConfig, seed: int, view: int, key: str) -> np.ndarray:
    if view == 0:
        return file_view(img, det_cfg.preprocess)
    salt = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
    return train_view(img, det_cfg.preprocess, aug, np.random.default_rng([seed, view, salt]))


class FeatureCache:
    """(sample key, view) -> L x D float16 block tokens, stored in atomic npz shards."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.rows: dict[tuple[str, int], np.ndarray] = {}
        self.errors: dict[str, str] = {}
        self.folder.mkdir(parents=True, exist_ok=True)
        for shard in sorted(self.folder.glob("shard-*.npz")):
            with np.load(shard) as z:
                for k, v, f in zip(z["keys"].tolist(), z["views"].tolist(), z["feats"], strict=True):
                    self.rows[(k, int(v))] = f
        errors = self.folder / "errors.json"
        if errors.is_file():
            self.errors = json.loads(errors.read_text())

    def get(self, key: str, view: int) -> np.ndarray:
        return self.rows[(key, view)]

    def has(self, key: str, view: int) -> bool:
        return (key, view) in self.rows

    def write_shard(self, keys: list[str], views: list[int], feats: np.ndarray) -> None:
        n = len(list(self.folder.glob("shard-*.npz")))
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, keys=np.array(keys), views=np.array(views), feats=feats.astype(np.float16))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / f"shard-{n:06d}.npz")
        for k, v, x in zip(keys, views, feats.astype(np.float16), strict=True):
            self.rows[(k, v)] = x

    def write_errors(self) -> None:
        from models.core.atomic import atomic_write_text

        atomic_write_text(self.folder / "errors.json", json.dumps(self.errors, indent=1, sort_keys=True))


class TapExtractor:
    """Runs the frozen BlockTaps: OpenVINO (bf16 on AMX CPUs) when available on CPU, else torch."""

    def __init__(self, taps: torch.nn.Module, device: str, size: int, engine: str = "auto"):
        self.taps, self.device = taps.eval().to(device), device
        self.compiled = None
        if engine in ("auto", "openvino") and device == "cpu":
            try:
                import openvino as ov

                from models.runtime.backends import openvino_core

                model = ov.convert_model(self.taps, example_input=torch.zeros(1, 3, size, size))
                self.compiled = openvino_core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
            except ImportError:
                if engine == "openvino":
                    raise
        self.engine = "openvino" if self.compiled is not None else "torch"

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.compiled is not None:
            return np.asarray(self.compiled(batch)[0], dtype=np.float32)
        dtype = torch.bfloat16 if self.device == "cpu" else torch.float16
        with torch.autocast(torch.device(self.device).type, dtype=dtype):
            return self.taps(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()


def fill(cache: FeatureCache, todo: Sequence[tuple[Sample, int]], extract, det_cfg: DetectorConfig,
         aug: AugmentConfig, seed: int, progress: bool = True) -> None:
    """Compute the (sample, view) pairs the cache lacks, one shard at a time."""
    missing = [(s, v) for s, v in todo if not cache.has(sample_key(s), v) and sample_key(s) not in cache.errors]
    if not missing:
        return
    log.info("feature cache %s: %d of %d views to compute (%s)", cache.folder, len(missing), len(todo),
             getattr(extract, "engine", "torch"))
    start, done = time.perf_counter(), 0
    for i in range(0, len(missing), SHARD_ROWS):
        keys, views, arrays = [], [], []
        for s, v in missing[i : i + SHARD_ROWS]:
            key = sample_key(s)
            try:
                img, _ = decode_image(s.path)
            except (ValueError, OSError) as e:
                cache.errors[key] = str(e)
                log.warning("skipping unreadable image %s: %s", s.path, e)
                continue
            keys.append(key)
            views.append(v)
            arrays.append(view_of(img, det_cfg, aug, seed, v, key))
        if arrays:
            feats = np.concatenate([extract(np.stack(arrays[j : j + 16])) for j in range(0, len(arrays), 16)])
            cache.write_shard(keys, views, feats)
        done += len(missing[i : i + SHARD_ROWS])
        if progress:
            rate = done / max(time.perf_counter() - start, 1e-9)
            log.info("features: %d/%d views (%.1f/s, %.0f s left)", done, len(missing), rate, (len(missing) - done) / rate)
    cache.write_errors()


def feature_cache_dir(key: str) -> Path:
    return cache_dir() / "features" / key
