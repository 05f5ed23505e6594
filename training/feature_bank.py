"""Frozen-backbone features for every file of several datasets at once: what the leave-one-out
benchmark (bench/generalization.py) and the recipe comparisons train heads on.

    bank = FeatureBank.build(recipe, datasets)        # fills the resumable feature cache once
    x, y = bank.eval_features(samples)                # view 0 (each file's own centre crop)

It uses the same cache, keys and views as `fakelens train --head blocks` with the same recipe,
so a benchmark run and the shipped detector's training share one extraction.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch

from models.core.config import DetectorConfig
from models.core.dataset import Sample
from models.runtime.detector import resolve_device
from training import frozen
from training.features import FeatureCache, sample_key
from training.pretrained import build_model
from training.train_config import TrainConfig

log = logging.getLogger("fakelens.train")


def frozen_recipe(data: str = "", out: str = "", **overrides) -> TrainConfig:
    """The shipped recipe's frozen-feature settings (CLIP ViT-B/16, all blocks, the shortcut-breaking
    augmentations of ../shared/notes/shortcuts.md on both classes)."""
    base = dict(data=data or "-", out=out or "-", model="clip-vit-b16", pretrained=True, head="blocks",
                feature_views=1, balance="source", jpeg_prob=0.5, blur_prob=0.3, downscale_prob=0.5,
                noise_prob=0.3, epochs=10, batch_size=64, lr=1e-3, device="cpu")
    return TrainConfig(**{**base, **overrides})


@dataclass
class FeatureBank:
    det: DetectorConfig
    cache: FeatureCache

    @classmethod
    def build(cls, recipe: TrainConfig, samples: list[Sample], device: str = "auto") -> FeatureBank:
        """View 0 of every sample, views 1..K of the train-split ones."""
        device = resolve_device(device)
        det = frozen.with_all_blocks(frozen.detector_config(recipe))
        train = [s for s in samples if s.split == "train"]
        others = [s for s in samples if s.split != "train"]
        model = build_model(recipe.model, recipe.pretrained, recipe.pretrained_file, det)
        cache = frozen.build_cache(recipe, det, model, train, others, device)
        return cls(det=dataclasses.replace(det), cache=cache)

    def usable(self, samples: list[Sample]) -> list[Sample]:
        return [s for s in samples if sample_key(s) not in self.cache.errors]

    def features(self, samples: list[Sample], view: int = 0) -> np.ndarray:
        return np.stack([self.cache.get(sample_key(s), view) for s in samples]).astype(np.float32)

    def has(self, s: Sample, view: int) -> bool:
        return self.cache.has(sample_key(s), view)


def head_outputs(head: torch.nn.Module, feats: np.ndarray, batch: int = 1024) -> np.ndarray:
    """N x C outputs of a head (the verdict head: C = 1; the family head: one per family) on cached tokens."""
    head.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(feats), batch):
            z = head(torch.from_numpy(feats[i : i + batch].astype(np.float32, copy=False))).float()
            out.append(z.reshape(len(z), -1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 1))


def head_logits(head: torch.nn.Module, feats: np.ndarray, batch: int = 1024) -> np.ndarray:
    return head_outputs(head, feats, batch)[:, 0]
