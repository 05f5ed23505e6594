"""The training data path: dataset keyed by (epoch, index), the epoch's batch order, rank shards, loader.

The order of an epoch is a permutation fixed by (seed, epoch) and each view a pure function
of (seed, epoch, index), so a run replays exactly on resume. Under torchrun every rank
computes the same global batches and takes its own contiguous slice of each one: the
global batch (--batch-size) and the sequence of batches do not depend on the number of
processes, which is what lets a 2-process run resume on 1 process and vice versa.

One DataLoader serves the whole run: its batch sampler (RankBatches) is re-aimed with
set_epoch() before each epoch, so worker processes can persist between epochs. Decoding
and augmentation run in the workers; `timed()` measures how long the loop waits for them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from models.core.config import PreprocessConfig
from models.core.dataset import Sample
from models.core.preprocess import decode_image
from training.augment import AugmentConfig, train_view


def epoch_draws(weights: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Which sample each index of an epoch reads under balanced sampling: len(weights) draws with
    replacement, fixed by (seed, epoch), so resume replays them."""
    return np.random.default_rng([seed, epoch, 7]).choice(len(weights), size=len(weights), p=weights)


class TrainDataset(Dataset):
    """Items are keyed by (epoch, index) so a view depends only on (seed, epoch, index).

    With `weights` (training/frozen.py `sample_weights`), index i of an epoch reads a drawn sample."""

    def __init__(self, samples: list[Sample], pre: PreprocessConfig, aug: AugmentConfig, seed: int,
                 weights: np.ndarray | None = None):
        self.samples, self.pre, self.aug, self.seed, self.weights = samples, pre, aug, seed, weights
        self._draws: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def sample_index(self, epoch: int, i: int) -> int:
        if self.weights is None:
            return i
        if epoch not in self._draws:
            self._draws = {epoch: epoch_draws(self.weights, self.seed, epoch)}
        return int(self._draws[epoch][i])

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        s = self.samples[self.sample_index(epoch, i)]
        try:
            img, _ = decode_image(s.path)
        except (ValueError, OSError) as e:  # ImageError is a ValueError; OSError: unreadable file
            return None, float(s.label), (s.path, str(e))
        rng = np.random.default_rng([self.seed, epoch, i])
        return torch.from_numpy(train_view(img, self.pre, self.aug, rng)), float(s.label), None


def collate(items):
    """Stack the decodable items; pass the (path, error) of the others on to be reported."""
    good = [(x, y) for x, y, err in items if err is None]
    errors = [err for _, _, err in items if err is not None]
    if not good:
        return torch.zeros(0), torch.zeros(0), errors
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good], dtype=torch.float32), errors


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The epoch's global batches of (epoch, index) keys: a permutation fixed by (seed, epoch).

    The last partial batch is dropped (a batch of 1 breaks BatchNorm) unless it is the only one.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    count = max(1, n // batch_size)
    return [[(epoch, i) for i in order[b * batch_size : (b + 1) * batch_size]] for b in range(count)]


def shard(batch: list, rank: int, world_size: int) -> list:
    """This rank's contiguous slice of a global batch (equal slices when the batch divides evenly)."""
    n = len(batch)
    return batch[rank * n // world_size : (rank + 1) * n // world_size]


def per_rank_batch(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise ValueError(
            f"--batch-size {batch_size} is the global batch and must divide evenly over {world_size} processes; "
            f"use a multiple of {world_size} (e.g. {batch_size + world_size - batch_size % world_size})"
        )
    return batch_size // world_size


class RankBatches:
    """Batch sampler: this rank's share of each global batch of one epoch, from a start batch on."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        per_rank_batch(batch_size, world_size)
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size
        self.batches: list[list[tuple[int, int]]] = []

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        # The DataLoader iterates this object in the main process when an epoch starts,
        # so re-aiming it here also steers persistent workers.
        batches = epoch_batches(self.n, self.batch_size, self.seed, epoch)[start:]
        self.batches = [shard(b, self.rank, self.world_size) for b in batches]

    def __iter__(self):
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


@dataclass(frozen=True)
class LoaderConfig:
    workers: int = 0
    prefetch_factor: int = 2
    pin_memory: bool = False


def make_loader(dataset: Dataset, batches: RankBatches | list, cfg: LoaderConfig) -> DataLoader:
    extra = dict(persistent_workers=True, prefetch_factor=cfg.prefetch_factor) if cfg.workers else {}
    # An explicit generator keeps the loader from drawing on the global torch RNG.
    return DataLoader(dataset, batch_sampler=batches, num_workers=cfg.workers, collate_fn=collate,
                      generator=torch.Generator().manual_seed(0), pin_memory=cfg.pin_memory, **extra)


class WaitClock:
    """Seconds the training loop spent blocked on the loader."""

    def __init__(self) -> None:
        self.waited = 0.0


def timed(iterable, clock: WaitClock):
    """Yield from `iterable`, adding the time each next() takes to clock.waited."""
    it = iter(iterable)
    while True:
        start = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        clock.waited += time.perf_counter() - start
        yield item
