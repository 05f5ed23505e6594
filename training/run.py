"""A training run's state and setup: the data splits, the model and its optimizer, the loader
(images, or the feature cache for a frozen-backbone head), checkpoint save and resume.

`setup(cfg)` builds a `Run` once; training/train.py's loop then only reads and advances it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.core.atomic import resolve_dir
from models.core.checkpoint import load_weights
from models.core.config import DetectorConfig
from models.core.dataset import Sample, fingerprint, list_samples
from models.runtime.detector import resolve_device
from training import distributed, frozen
from training.checkpointing import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from training.features import FeatureCache
from training.loader import (
    LoaderConfig,
    RankBatches,
    TrainDataset,
    epoch_batches,
    make_loader,
    per_rank_batch,
)
from training.model_prep import (
    amp_settings,
    enable_grad_checkpointing,
    freeze_backbone,
    is_main_process,
    seed_everything,
    unwrap,
    use_channels_last,
    wrap_model,
    zero_head,
)
from training.optim import EMA, build_optimizer, build_scheduler
from training.pretrained import build_model
from training.train_config import TrainConfig

log = logging.getLogger("fakelens.train")


# ---- data ---------------------------------------------------------------------------------

def _describe(samples: list[Sample]) -> str:
    real = sum(s.label == 0 for s in samples)
    return f"{real} real, {len(samples) - real} fake"


def load_splits(data: str) -> tuple[list[Sample], list[Sample]]:
    """The train and val samples, refusing splits a detector cannot be trained/validated on."""
    samples = list_samples(data)
    counts = {s: sum(x.split == s for x in samples) for s in ("train", "val", "test")}
    train = [s for s in samples if s.split == "train"]
    val = [s for s in samples if s.split == "val"]
    for name, part in (("train", train), ("val", val)):
        if not part:
            raise ValueError(f"the {name} split of {data} is empty (splits: {counts}); add images or a 'split' column")
        labels = {s.label for s in part}
        if len(labels) < 2:
            only = "real" if labels == {0} else "fake"
            raise ValueError(
                f"the {name} split of {data} holds only {only} images ({len(part)}); "
                "a detector needs both real and fake images in train and val"
            )
    return train, val


# ---- the run ------------------------------------------------------------------------------

@dataclass
class Progress:
    """Where the run stands; saved in train_state.pt."""

    epoch: int = 0  # current epoch
    batch: int = 0  # next batch within it
    step: int = 0  # optimizer steps taken
    best_auc: float = -math.inf
    bad_epochs: int = 0
    best_epoch: int = 0  # epoch (1-based) and step that best/ holds
    best_step: int = 0


@dataclass
class Run:
    """Everything the loop touches, built once by setup()."""

    cfg: TrainConfig
    run_dir: Path
    device: str
    det_cfg: DetectorConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    ema: EMA | None
    amp_dtype: torch.dtype | None
    loss_fn: torch.nn.Module
    dataset: TrainDataset | frozen.FeatureDataset
    val: list[Sample]
    batches_per_epoch: int
    sampler: RankBatches
    loader: Any
    channels_last: bool = False
    # The feature cache a "blocks" head trains and validates on (None: images through the model).
    features: FeatureCache | None = None
    progress: Progress = field(default_factory=Progress)
    bad_files: dict[str, str] = field(default_factory=dict)

    def eval_model(self) -> torch.nn.Module:
        """The weights validation and `best` use: EMA when enabled."""
        return self.ema.module if self.ema is not None else unwrap(self.model)


@dataclass
class TrainResult:
    run_dir: Path
    best_dir: Path | None
    best_auc: float
    steps: int
    epochs: int
    bad_files: dict[str, str]
    seconds: float


def prepare_run_dir(cfg: TrainConfig) -> Path:
    run_dir = Path(cfg.out)
    saved_path = run_dir / "train_config.json"
    has_run = any(resolve_dir(run_dir / n) for n in ("last", "best"))
    if has_run and not cfg.resume:
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it or choose a new --out")
    if cfg.resume and saved_path.is_file():
        conflicts = cfg.resume_conflicts(TrainConfig.load(saved_path))
        if conflicts:
            raise ValueError(f"--resume with settings that differ from the interrupted run: {'; '.join(conflicts)}")
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(saved_path)
    return run_dir


def setup(cfg: TrainConfig) -> Run:
    # Check everything a person can get wrong before the run folder is touched.
    device = resolve_device(cfg.device)
    amp_dtype, use_scaler = amp_settings(cfg.amp, device)
    per_rank_batch(cfg.batch_size, distributed.from_env().world_size)
    train_samples, val = load_splits(cfg.data)
    info = distributed.init(device)
    run_dir = prepare_run_dir(cfg)
    distributed.barrier()  # the run folder exists before any rank reads or writes it
    seed_everything(cfg.seed)
    log.info("data %s: train %s; val %s", cfg.data, _describe(train_samples), _describe(val))
    if info.enabled:
        log.info("DistributedDataParallel: %d processes, global batch %d (%d per process)", info.world_size,
                 cfg.batch_size, cfg.batch_size // info.world_size)
    det_cfg = dataclasses.replace(frozen.detector_config(cfg), data_fingerprint=fingerprint(train_samples + val))
    det_cfg = frozen.with_all_blocks(det_cfg)
    model = build_model(cfg.model, cfg.pretrained, cfg.pretrained_file, det_cfg).to(device)
    channels_last = use_channels_last(cfg, model, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model, cfg.model)
    if det_cfg.head == "classifier":
        zero_head(model)  # a "blocks" head starts at zero by construction
    if cfg.freeze_backbone:
        freeze_backbone(model)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.layer_decay)
    batches_per_epoch = len(epoch_batches(len(train_samples), cfg.batch_size, cfg.seed, 0))
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.accum_steps)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = build_scheduler(optimizer, warmup, steps_per_epoch * cfg.epochs, cfg.min_lr_ratio)
    features, dataset, pos_weight = None, None, torch.tensor(1.0, device=device)
    if det_cfg.head == "blocks" and not det_cfg.tunes_backbone:
        # The frozen backbone runs once per view; the loop then trains the head on the cache.
        features = frozen.build_cache(cfg, det_cfg, model, train_samples, val, device)
        content = frozen.cache_clusters(train_samples, features, cfg.seed) if cfg.balance == "content" else None
        weights = frozen.sample_weights(train_samples, cfg.balance, content)
        dataset = frozen.FeatureDataset(train_samples, features, cfg.feature_views, weights, cfg.seed)
    else:
        # Balanced sampling when asked for by name ("label" stays the loss's pos_weight, as before).
        weights = frozen.sample_weights(train_samples, cfg.balance) if cfg.balance == "source" else None
        dataset = TrainDataset(train_samples, det_cfg.preprocess, frozen.augment_config(cfg), cfg.seed, weights)
    if cfg.balance == "content" and features is None:
        raise ValueError("--balance content clusters cached frozen-backbone features: use it with --head blocks "
                         "without --lora-rank/--tune-blocks, or --balance source")
    if cfg.balance == "none" or (features is None and cfg.balance != "source"):
        # Without balanced sampling, pos_weight balances the classes in the loss instead.
        n_fake = sum(s.label for s in train_samples)
        pos_weight = torch.tensor((len(train_samples) - n_fake) / n_fake, device=device)
    sampler = RankBatches(len(train_samples), cfg.batch_size, cfg.seed, info.rank, info.world_size)
    loader = make_loader(dataset, sampler, LoaderConfig(cfg.workers, cfg.prefetch_factor, pin_memory=device == "cuda"))
    run = Run(
        cfg=cfg, run_dir=run_dir, device=device, det_cfg=det_cfg, model=model, optimizer=optimizer,
        scheduler=scheduler, scaler=torch.amp.GradScaler("cuda") if use_scaler else None,
        ema=EMA(model, cfg.ema_decay) if cfg.ema_decay else None, amp_dtype=amp_dtype,
        loss_fn=torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight), dataset=dataset, val=val,
        batches_per_epoch=batches_per_epoch, sampler=sampler, loader=loader, channels_last=channels_last,
        features=features,
    )
    if cfg.resume:
        resume(run)
    if info.enabled:
        # Each rank draws its own dropout/drop-path masks; with one process the restored
        # stream carries on untouched, so single-process resume stays bit-exact.
        torch.manual_seed(cfg.seed * 1_000_003 + run.progress.step * 1_009 + info.rank)
    run.model = wrap_model(run.model, cfg, device)
    return run


def train_state(run: Run) -> dict[str, Any]:
    return {
        "progress": dataclasses.asdict(run.progress),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "rng": capture_rng(),
    }


def resume(run: Run) -> None:
    found = load_checkpoint(run.run_dir, "last")
    if found is None:
        log.warning("--resume: %s has no last/ checkpoint yet; starting from scratch", run.run_dir)
        return
    folder, weights, state = found
    load_weights(unwrap(run.model), run.det_cfg, weights, str(folder))
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state["scaler"] is not None:
        run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"] if state["ema"] is not None else weights)
    run.progress = Progress(**state["progress"])
    restore_rng(state["rng"])
    log.info("resumed from %s at epoch %d, batch %d, step %d", folder, run.progress.epoch + 1,
             run.progress.batch, run.progress.step)


def save(run: Run, name: str) -> None:
    if not is_main_process():
        return
    model = run.eval_model() if name == "best" else unwrap(run.model)
    save_checkpoint(run.run_dir, name, model, run.det_cfg, train_state(run))
