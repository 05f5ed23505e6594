"""What `fakelens train --head blocks` adds to the plain loop: the model's identity, the feature
cache as the loop's input pipeline, and balanced sampling. The loop itself stays in train.py.

    --model clip-vit-b16 --pretrained --head blocks   # OpenAI CLIP ViT-B/16, no hub needed
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import numpy as np
import torch
from torch.utils.data import Dataset

from models.core.backbones import weights_for_alias
from models.core.config import DetectorConfig, PreprocessConfig
from models.core.dataset import Sample
from training.augment import AugmentConfig
from training.features import FeatureCache, TapExtractor, cache_key, feature_cache_dir, fill, sample_key
from training.loader import epoch_draws
from training.train_config import TrainConfig

log = logging.getLogger("fakelens.train")


def pretrained_norm(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """mean/std of the weights timm would load for `arch` (CLIP, SigLIP, ... differ from ImageNet)."""
    import timm

    try:
        pc = timm.models.get_pretrained_cfg(arch)
    except Exception:  # unknown tags raise several error types; the defaults then apply
        return None
    if pc is None or not getattr(pc, "mean", None):
        return None
    return tuple(float(x) for x in pc.mean), tuple(float(x) for x in pc.std)


def detector_config(cfg: TrainConfig) -> DetectorConfig:
    """The DetectorConfig a run trains: architecture, weights identity, preprocessing from the weights."""
    pre = PreprocessConfig(img_size=cfg.img_size, crop_mode=cfg.crop_mode, **scale_policy(cfg))
    spec = weights_for_alias(cfg.model)
    det = DetectorConfig(arch=cfg.model, model_kwargs=dict(cfg.model_kwargs), preprocess=pre, target_fpr=cfg.target_fpr)
    if spec is not None:
        if not cfg.pretrained:
            raise ValueError(f"--model {cfg.model} names pretrained weights; add --pretrained")
        det = dataclasses.replace(
            det, arch=spec.arch, model_kwargs={"num_classes": spec.num_classes, **det.model_kwargs},
            backbone_weights=spec.name, backbone_sha256=spec.sha256,
            preprocess=dataclasses.replace(pre, mean=spec.mean, std=spec.std))
    elif cfg.pretrained or cfg.pretrained_file:
        norm = pretrained_norm(cfg.model)
        if norm is not None:
            det = dataclasses.replace(det, preprocess=dataclasses.replace(pre, mean=norm[0], std=norm[1]))
    if cfg.head == "blocks":
        det = dataclasses.replace(det, head="blocks", head_dim=cfg.head_dim, blocks=cfg.blocks or (-1,),
                                  lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha or float(cfg.lora_rank),
                                  lora_blocks=tuple(cfg.lora_blocks), tuned_blocks=tuple(cfg.tune_blocks))
    return det


def scale_policy(cfg: TrainConfig) -> dict:
    """PreprocessConfig fields of the run's scale policy (native_weight is fitted at calibration)."""
    if cfg.crop_mode == "resize":
        return {"scales": ("native",)}
    resize = cfg.resize_size or round(cfg.img_size * 8 / 7)
    return {"scales": tuple(cfg.scales), "resize_size": resize, "undo_upscale": cfg.undo_upscale}


def with_all_blocks(det: DetectorConfig) -> DetectorConfig:
    """blocks=() on the command line means every block of the backbone."""
    if det.blocks != (-1,):
        if det.lora_rank and not det.lora_blocks:
            return dataclasses.replace(det, lora_blocks=tuple(range(max(0, max(det.blocks) - 3), max(det.blocks) + 1)))
        return det
    from models.core.network import build_backbone

    depth = len(build_backbone(dataclasses.replace(det, head="classifier", blocks=())).blocks)
    det = dataclasses.replace(det, blocks=tuple(range(depth)))
    if det.lora_rank and not det.lora_blocks:
        det = dataclasses.replace(det, lora_blocks=tuple(range(max(0, depth - 4), depth)))
    return det


def augment_config(cfg: TrainConfig) -> AugmentConfig:
    return AugmentConfig(jpeg_prob=cfg.jpeg_prob, blur_prob=cfg.blur_prob, hflip=cfg.hflip,
                         downscale_prob=cfg.downscale_prob, noise_prob=cfg.noise_prob)


def sample_weights(samples: list[Sample], balance: str, content: np.ndarray | None = None) -> np.ndarray:
    """Sampling probabilities: each label half the draws ("label"), and within a label each source
    weighted by 1/sqrt(its size) ("source"), so the largest source does not set the decision
    while a source of 20 images is not repeated 50 times an epoch. "content" also balances the
    labels within each content cluster (`content`: a cluster id per sample, `content_clusters`)."""
    y = np.array([s.label for s in samples])
    if balance == "content":
        if content is None:
            raise ValueError("--balance content needs content clusters (a frozen-backbone feature cache)")
        return balance_within_clusters(sample_weights(samples, "source"), y, content)
    if balance == "none":
        w = np.ones(len(samples))
    else:
        sizes = Counter((s.label, s.source) for s in samples)
        per = [1.0 / np.sqrt(sizes[(s.label, s.source)]) if balance == "source" else 1.0 for s in samples]
        w = np.asarray(per, dtype=np.float64)
        for label in (0, 1):
            w[y == label] /= w[y == label].sum() * 2
    return w / w.sum()


# What a cluster that holds one label keeps of its sampling mass: some, or its generator (or its
# kind of real photo) would be unseen, but little, or its content would become the label.
ONE_LABEL_MASS = 0.2


def balance_within_clusters(w: np.ndarray, y: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Reweight so that real and fake carry the same mass inside every content cluster: a detector
    then cannot read "portrait" or "crowd" as a label ("Balance what the classes depict"). Mass a
    cluster has in one label only is kept at ONE_LABEL_MASS of its weight."""
    out = w.copy()
    for c in np.unique(clusters):
        m = clusters == c
        real, fake = w[m & (y == 0)].sum(), w[m & (y == 1)].sum()
        shared = min(real, fake)
        for label, mass in ((0, real), (1, fake)):
            if mass > 0:
                target = shared + ONE_LABEL_MASS * (mass - shared)
                out[m & (y == label)] *= target / mass
    for label in (0, 1):
        out[y == label] /= out[y == label].sum() * 2
    return out / out.sum()


def content_clusters(tokens: np.ndarray, k: int = 24, seed: int = 0, iters: int = 25) -> np.ndarray:
    """Cluster ids from the backbone's last tapped CLS token (what a picture depicts), by spherical
    k-means with a fixed seed: deterministic, so resume and rebuilds replay."""
    x = tokens / (np.linalg.norm(tokens, axis=1, keepdims=True) + 1e-8)
    rng = np.random.default_rng([seed, 13])
    centres = x[rng.choice(len(x), size=min(k, len(x)), replace=False)]
    for _ in range(iters):
        ids = np.argmax(x @ centres.T, axis=1)
        for j in range(len(centres)):
            if np.any(ids == j):
                c = x[ids == j].mean(0)
                centres[j] = c / (np.linalg.norm(c) + 1e-8)
    return np.argmax(x @ centres.T, axis=1)


def cache_clusters(samples: list[Sample], cache: FeatureCache, seed: int) -> np.ndarray:
    """Content clusters of the train samples from their cached eval view (unreadable files: -1)."""
    ok = [i for i, s in enumerate(samples) if sample_key(s) not in cache.errors]
    ids = np.full(len(samples), -1)
    tokens = np.stack([cache.get(sample_key(samples[i]), 0)[-1] for i in ok]).astype(np.float32)
    ids[ok] = content_clusters(tokens, seed=seed)
    return ids


class FeatureDataset(Dataset):
    """The loop's (epoch, index) items, read from the feature cache.

    Each epoch draws len(samples) images with `weights` (a table fixed by seed and epoch) and,
    for each, one of its cached views: a pure function of (seed, epoch, index), so resume replays.
    """

    def __init__(self, samples: list[Sample], cache: FeatureCache, views: int, weights: np.ndarray, seed: int):
        self.keys = [sample_key(s) for s in samples]
        self.labels = [float(s.label) for s in samples]
        self.samples, self.cache, self.views, self.weights, self.seed = samples, cache, views, weights, seed
        self._tables: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def table(self, epoch: int) -> np.ndarray:
        if epoch not in self._tables:
            self._tables = {epoch: epoch_draws(self.weights, self.seed, epoch)}
        return self._tables[epoch]

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        j = int(self.table(epoch)[i])
        view = int(np.random.default_rng([self.seed, epoch, i, 11]).integers(0, self.views + 1))
        k = self.keys[j]
        if k in self.cache.errors:
            return None, self.labels[j], (self.samples[j].path, self.cache.errors[k])
        return torch.from_numpy(self.cache.get(k, view).astype(np.float32)), self.labels[j], None


def build_cache(cfg: TrainConfig, det: DetectorConfig, model: torch.nn.Module, train: list[Sample],
                others: list[Sample], device: str) -> FeatureCache:
    """Fill the cache for every view the run will read: view 0 of all samples, 1..K of train."""
    aug = augment_config(cfg)
    cache = FeatureCache(feature_cache_dir(cache_key(det, aug, cfg.seed)))
    todo = [(s, 0) for s in train + others] + [(s, v) for v in range(1, cfg.feature_views + 1) for s in train]
    if any(not cache.has(sample_key(s), v) for s, v in todo):
        extract = TapExtractor(model.taps, device, det.preprocess.img_size)
        fill(cache, todo, extract, det, aug, cfg.seed, progress=cfg.progress)
    return cache


def cached_logits(model: torch.nn.Module, cache: FeatureCache, samples: list[Sample], device: str,
                  batch: int = 512) -> tuple[np.ndarray, np.ndarray, list[Sample]]:
    """Head logits on each sample's eval view (view 0); (logits, labels, samples kept)."""
    kept = [s for s in samples if sample_key(s) not in cache.errors]
    out = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(kept), batch):
            x = np.stack([cache.get(sample_key(s), 0) for s in kept[i : i + batch]]).astype(np.float32)
            z = model(torch.from_numpy(x).to(device)).float()
            out.append(z.reshape(len(x), -1)[:, 0].cpu().numpy())  # column 0: the verdict logit
    logits = np.concatenate(out) if out else np.zeros(0)
    return logits, np.array([s.label for s in kept]), kept
