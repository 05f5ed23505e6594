"""The training loop behind `fakelens train`: a timm backbone fine-tuned into a 1-logit detector.

    fakelens train --data DATA --out RUN --model vit_tiny_patch16_224 --img-size 64 --epochs 2
    python -m training --data DATA --out RUN ...        # the same

One flat loop, every optimizer step in sight: zero_grad, forward under autocast,
BCE-with-logits (pos_weight balances the classes), backward (with gradient accumulation),
clip, optimizer.step(), scheduler.step(). Each epoch ends with validation on the val split
through the same Detector/preprocessing the service uses, a line in RUN/metrics.jsonl and
the RUN/last/ (+ RUN/best/ by val AUC) checkpoints; `last` is also written every
`save_every` steps, and `resume=True` continues bit-for-bit from it (the data order is a
pure function of (seed, epoch) and each view of (seed, epoch, index), and the RNGs are
restored). The best model is finally calibrated on the val split.

Under torchrun (`torchrun --nproc_per_node N -m training ...`) the same loop runs
DistributedDataParallel: --batch-size stays the *global* batch (each rank takes its slice,
training/loader.py), the train loss and loader timings are summed over ranks, rank 0
validates and broadcasts the metrics, and only rank 0 writes checkpoints, metrics.jsonl
and the calibration while the others wait (training/distributed.py). Checkpoints hold the
unwrapped module and the global data position, so a run resumes on any number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.atomic import resolve_dir
from models.checkpoint import CONFIG, WEIGHTS, load_model_dir
from models.config import DetectorConfig, PreprocessConfig
from models.dataset import Sample, fingerprint, list_samples
from models.metrics import roc_auc
from models.runtime import Detector, ModuleBackend, resolve_device
from training import distributed
from training.augment import AugmentConfig
from training.calibrate import calibrate
from training.checkpointing import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from training.evaluate import collect_logits
from training.loader import (
    LoaderConfig,
    RankBatches,
    TrainDataset,
    WaitClock,
    epoch_batches,
    make_loader,
    per_rank_batch,
    timed,
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


# ---- model and devices ------------------------------------------------------------------

def detector_config(cfg: TrainConfig) -> DetectorConfig:
    pre = PreprocessConfig(img_size=cfg.img_size, crop_mode=cfg.crop_mode)
    return DetectorConfig(arch=cfg.model, model_kwargs=dict(cfg.model_kwargs), preprocess=pre, target_fpr=cfg.target_fpr)


@torch.no_grad()
def zero_head(model: torch.nn.Module) -> None:
    """Start the new 1-logit head at zero: every image starts at p=0.5 (loss ln 2).

    Some timm heads are initialised for 1000 classes of ImageNet (EfficientNet's draws
    uniform(+-1/sqrt(num_classes)) = +-1 for one output), which on pretrained features
    gives logits in the tens and a first loss far above ln 2.
    """
    for p in model.get_classifier().parameters():
        p.zero_()


def freeze_backbone(model: torch.nn.Module) -> None:
    """Linear probe: only the classifier head trains."""
    head = {id(p) for p in model.get_classifier().parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in head)


def set_train_mode(model: torch.nn.Module, frozen_backbone: bool) -> None:
    # A frozen backbone keeps its BatchNorm statistics and dropout off, like at eval time.
    model.train(not frozen_backbone)
    if frozen_backbone:
        unwrap(model).get_classifier().train()


def is_convolutional(model: torch.nn.Module) -> bool:
    """More than a patch-embedding convolution: channels-last memory pays off for such models."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) > 1


def use_channels_last(cfg: TrainConfig, model: torch.nn.Module, device: str) -> bool:
    if cfg.channels_last is not None:
        return cfg.channels_last
    # On for conv nets everywhere: oneDNN's NHWC kernels too made an efficientnet_lite0 train
    # step ~1.6x faster on this CPU (depthwise convolutions are memory-bound in NCHW).
    return is_convolutional(model)


def enable_grad_checkpointing(model: torch.nn.Module, arch: str) -> None:
    """Recompute activations in backward (timm's per-block checkpointing): big ViTs fit larger batches."""
    fn = getattr(model, "set_grad_checkpointing", None)
    if not callable(fn):
        raise ValueError(f"--grad-checkpointing: the timm model {arch!r} does not support it; drop the flag")
    fn(True)


def wrap_model(model: torch.nn.Module, cfg: TrainConfig, device: str) -> torch.nn.Module:
    """DistributedDataParallel under torchrun, then torch.compile when asked for."""
    info = distributed.current()
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # static_graph lets DDP work with (reentrant) activation checkpointing.
        model = DistributedDataParallel(model, device_ids=[info.local_rank] if device == "cuda" else None,
                                        static_graph=cfg.grad_checkpointing)
    if cfg.compile:
        model = torch.compile(model)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain timm module inside torch.compile and DDP wrappers (what checkpoints hold)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def grad_sync(model: torch.nn.Module, sync: bool):
    """DDP's no_sync() while accumulating: gradients are all-reduced once per optimizer step."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def is_main_process() -> bool:
    """Only the main process writes checkpoints, metrics and logs (rank 0 under DDP)."""
    return distributed.is_main_process()


def amp_settings(amp: str, device: str) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether to use a GradScaler)."""
    if amp == "auto":
        # bf16 is a clear win on GPUs; on CPUs it is often no faster and costs precision.
        # GPUs without bf16 (before Ampere) get fp16 with a GradScaler instead.
        amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device == "cuda" else "none"
    if amp == "fp16" and device != "cuda":
        raise ValueError("--amp fp16 needs a CUDA GPU (fp16 training relies on a GradScaler); on CPU use --amp bf16 or none")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp], amp == "fp16"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    dataset: TrainDataset
    val: list[Sample]
    batches_per_epoch: int
    sampler: RankBatches
    loader: Any
    channels_last: bool = False
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
    det_cfg = dataclasses.replace(detector_config(cfg), data_fingerprint=fingerprint(train_samples + val))
    model = build_model(cfg.model, cfg.pretrained, cfg.pretrained_file, det_cfg).to(device)
    channels_last = use_channels_last(cfg, model, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model, cfg.model)
    zero_head(model)
    if cfg.freeze_backbone:
        freeze_backbone(model)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.layer_decay)
    batches_per_epoch = len(epoch_batches(len(train_samples), cfg.batch_size, cfg.seed, 0))
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.accum_steps)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    scheduler = build_scheduler(optimizer, warmup, steps_per_epoch * cfg.epochs, cfg.min_lr_ratio)
    n_fake = sum(s.label for s in train_samples)
    pos_weight = torch.tensor((len(train_samples) - n_fake) / n_fake, device=device)
    aug = AugmentConfig(jpeg_prob=cfg.jpeg_prob, blur_prob=cfg.blur_prob, hflip=cfg.hflip)
    dataset = TrainDataset(train_samples, det_cfg.preprocess, aug, cfg.seed)
    sampler = RankBatches(len(train_samples), cfg.batch_size, cfg.seed, info.rank, info.world_size)
    loader = make_loader(dataset, sampler, LoaderConfig(cfg.workers, cfg.prefetch_factor, pin_memory=device == "cuda"))
    run = Run(
        cfg=cfg, run_dir=run_dir, device=device, det_cfg=det_cfg, model=model, optimizer=optimizer,
        scheduler=scheduler, scaler=torch.amp.GradScaler("cuda") if use_scaler else None,
        ema=EMA(model, cfg.ema_decay) if cfg.ema_decay else None, amp_dtype=amp_dtype,
        loss_fn=torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight), dataset=dataset, val=val,
        batches_per_epoch=batches_per_epoch, sampler=sampler, loader=loader, channels_last=channels_last,
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
    unwrap(run.model).load_state_dict(weights)
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


def validate(run: Run, model: torch.nn.Module, det_cfg: DetectorConfig) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Val AUC and loss through the service's own preprocessing; (metrics, logits, labels)."""

    detector = Detector(config=det_cfg, backend=ModuleBackend(model, run.device), source="training")
    logits, labels, _, errors = collect_logits(detector, run.val, run.cfg.val_batch_size)
    report_bad_files(run, errors)
    if len(set(np.asarray(labels).tolist())) < 2:
        raise ValueError("fewer than two classes of val images could be decoded; see the skipped files above")
    z, y = torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(labels, dtype=torch.float64)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y).item()
    return {"val_auc": float(roc_auc(labels, logits)), "val_loss": loss}, np.asarray(logits), np.asarray(labels)


def report_bad_files(run: Run, errors: list[tuple[str, str]]) -> None:
    for path, message in errors:
        if path not in run.bad_files:
            run.bad_files[path] = message
            log.warning("skipping unreadable image %s: %s", path, message)


def append_metrics(run: Run, line: dict[str, Any]) -> None:
    if is_main_process():
        with (run.run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")


def train_one_epoch(run: Run) -> tuple[dict[str, float], bool]:
    """Train from the current (epoch, batch) to the epoch's end or to max_steps.

    Returns (stats, stopped_early_by_max_steps).
    """
    cfg, p, model, optimizer = run.cfg, run.progress, run.model, run.optimizer
    n_batches = run.batches_per_epoch
    run.sampler.set_epoch(p.epoch, p.batch)
    set_train_mode(model, cfg.freeze_backbone)
    params = [q for q in model.parameters() if q.requires_grad]
    device_type = torch.device(run.device).type
    autocast = (torch.autocast(device_type, dtype=run.amp_dtype) if run.amp_dtype is not None
                else contextlib.nullcontext())
    # The loss stays on the device: a .item() per step would stall the GPU queue.
    loss_sum, images = torch.zeros((), dtype=torch.float64, device=run.device), 0
    clock, start = WaitClock(), time.perf_counter()
    bar = _progress_bar(cfg, p, n_batches)
    for k, (x, y, errors) in enumerate(timed(run.loader, clock), start=p.batch):
        report_bad_files(run, errors)
        if (k % cfg.accum_steps) == 0:
            optimizer.zero_grad(set_to_none=True)
        sync = (k + 1) % cfg.accum_steps == 0 or k + 1 == n_batches
        x, y, weight = _nonempty(run, x, y)
        if len(x):
            x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
            if run.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with grad_sync(model, sync):
                with autocast:
                    logits = model(x).reshape(-1).float()
                loss = run.loss_fn(logits, y) * weight
                scaled = loss / cfg.accum_steps
                (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
            loss_sum += loss.detach() * len(y)
            images += len(y) if weight else 0
        p.batch = k + 1
        if not sync:
            continue  # keep accumulating gradients
        if run.scaler is not None:
            run.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        if run.scaler is not None:
            run.scaler.step(optimizer)
            run.scaler.update()
        else:
            optimizer.step()
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update(unwrap(model))
        p.step += 1
        _update_bar(bar, p, loss_sum, images, start)
        if cfg.max_steps is not None and p.step >= cfg.max_steps:
            bar.close()
            return _epoch_stats(run, loss_sum, images, start, clock), True
        if cfg.save_every and p.step % cfg.save_every == 0 and p.batch < n_batches:
            save(run, "last")
    bar.close()
    return _epoch_stats(run, loss_sum, images, start, clock), False


def _nonempty(run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(x, y, loss weight). A rank whose whole shard failed to decode still joins DDP's
    gradient all-reduce, with one blank image at loss weight 0; alone, it skips the batch."""
    if len(x) or not distributed.current().enabled:
        return x, y, 1.0
    size = run.det_cfg.preprocess.img_size
    return torch.zeros(1, 3, size, size), torch.zeros(1), 0.0


def _update_bar(bar, p: Progress, loss_sum: torch.Tensor, images: int, start: float) -> None:
    bar.update(p.batch - bar.n)
    if not bar.disable and (p.step % 10 == 1):  # the postfix reads the loss: a device sync
        rate = images / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(loss=f"{loss_sum.item() / max(images, 1):.4f}", img_s=f"{rate:.1f}")


def _progress_bar(cfg: TrainConfig, p: Progress, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=p.batch, desc=f"epoch {p.epoch + 1}/{cfg.epochs}", unit="batch",
                disable=not (cfg.progress and is_main_process()), leave=False)


def _epoch_stats(run: Run, loss_sum: torch.Tensor, images: int, start: float, clock: WaitClock) -> dict[str, float]:
    """Train loss and throughput over all ranks; data_wait_fraction: the share of the epoch
    the loop sat waiting for decoded batches (near 0: compute-bound; near 1: the loader is
    the bottleneck, add --workers)."""
    seconds = time.perf_counter() - start
    world = distributed.current().world_size
    loss, images, waited, rank_seconds = distributed.sum_across(
        [loss_sum.item(), float(images), clock.waited, seconds], run.device)
    run.bad_files.update(distributed.gather_dicts(run.bad_files))
    return {"train_loss": loss / max(images, 1), "images_per_s": images / max(seconds, 1e-9), "seconds": seconds,
            "data_wait_s": waited / world, "data_wait_fraction": waited / max(rank_seconds, 1e-9),
            "processes": world}


def end_epoch(run: Run, stats: dict[str, float], partial: bool) -> bool:
    """Validate, log, checkpoint; returns True when early stopping says stop."""
    p = run.progress
    # Rank 0 validates; every rank needs the result to take the same early-stopping decision.
    metrics = validate(run, run.eval_model(), run.det_cfg)[0] if is_main_process() else None
    metrics = distributed.broadcast_from_main(metrics)
    improved = not partial and metrics["val_auc"] > p.best_auc
    line = {"epoch": p.epoch + 1, "step": p.step, **stats, **metrics,
            "lr": run.optimizer.param_groups[0]["lr"], "skipped_files": len(run.bad_files)}
    if partial:
        line["partial_epoch"] = True
        # A max_steps stop keeps the saved position mid-epoch so --resume carries on;
        # it only writes best/ when there is none, so short smoke runs leave a usable model.
        if resolve_dir(run.run_dir / "best") is None:
            p.best_epoch, p.best_step = p.epoch + 1, p.step
            save(run, "best")
        save(run, "last")
    else:
        p.bad_epochs = 0 if improved else p.bad_epochs + 1
        p.best_auc = max(p.best_auc, metrics["val_auc"])
        p.epoch, p.batch = p.epoch + 1, 0
        # best before last: a crash between the two replays this epoch end on resume.
        if improved:
            p.best_epoch, p.best_step = p.epoch, p.step
            save(run, "best")
        save(run, "last")
    append_metrics(run, line)
    log.info("epoch %d step %d: train_loss %.4f val_loss %.4f val_auc %.4f (%.0f img/s, %.1f s)%s",
             line["epoch"], p.step, stats["train_loss"], metrics["val_loss"], metrics["val_auc"],
             stats["images_per_s"], stats["seconds"], " *best*" if improved else "")
    return not partial and patience_exceeded(run)


def patience_exceeded(run: Run) -> bool:
    patience = run.cfg.patience
    if patience is not None and run.progress.bad_epochs >= patience:
        log.info("early stopping: val AUC has not improved for %d epochs", patience)
        return True
    return False


def model_version(weights: Path) -> str:
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:8]
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + digest


def finalize_best(run: Run) -> tuple[Path | None, float]:
    """Calibrate RUN/best on the val split; record metrics, fingerprint and version in detector.json.

    Returns (best folder, its val AUC).
    """
    best_dir = resolve_dir(run.run_dir / "best")
    if best_dir is None or not is_main_process():
        return best_dir, run.progress.best_auc
    model, det_cfg = load_model_dir(best_dir)
    metrics, logits, labels = validate(run, model.to(run.device), det_cfg)
    calibrated = calibrate(det_cfg, logits, labels)
    calibrated = dataclasses.replace(
        calibrated,
        version=model_version(best_dir / WEIGHTS),
        data_fingerprint=run.det_cfg.data_fingerprint,
        metrics={**calibrated.metrics, **metrics, "epoch": run.progress.best_epoch, "step": run.progress.best_step,
                 "n_train": len(run.dataset), "n_val": len(run.val)},
    )
    calibrated.save(best_dir / CONFIG)
    log.info("calibrated %s: temperature %.3f, threshold %.3f, val AUC %.4f", best_dir,
             calibrated.temperature, calibrated.threshold, metrics["val_auc"])
    return best_dir, metrics["val_auc"]


def train(cfg: TrainConfig) -> TrainResult:
    start = time.perf_counter()
    try:
        run = setup(cfg)
        p = run.progress
        while p.epoch < cfg.epochs and not (cfg.max_steps is not None and p.step >= cfg.max_steps):
            stats, hit_max_steps = train_one_epoch(run)
            # A max_steps stop on an epoch's last batch still completes that epoch.
            partial = p.batch < run.batches_per_epoch
            if end_epoch(run, stats, partial) or hit_max_steps:
                break
        best_dir, best_auc = finalize_best(run)
        distributed.barrier()  # the other ranks wait for rank 0's calibration
        main = is_main_process()
    finally:
        distributed.shutdown()
    if run.bad_files and main:
        log.warning("%d unreadable images were skipped (listed above)", len(run.bad_files))
    return TrainResult(run.run_dir, best_dir, best_auc, p.step, p.epoch, dict(run.bad_files),
                       time.perf_counter() - start)
