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

DistributedDataParallel slots in at three small functions: wrap_model, epoch_batches
(shard the batch list per rank) and is_main_process (only rank 0 writes).
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
from torch.utils.data import DataLoader, Dataset

from models.atomic import resolve_dir
from models.checkpoint import CONFIG, WEIGHTS, load_model_dir
from models.config import DetectorConfig, PreprocessConfig
from models.preprocess import decode_image
from models.runtime import Detector, ModuleBackend, resolve_device
from training.augment import AugmentConfig, train_view
from training.checkpointing import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from training.data import Sample, fingerprint, list_samples
from training.optim import EMA, build_optimizer, build_scheduler
from training.pretrained import build_model
from training.train_config import TrainConfig

log = logging.getLogger("fakelens.train")


# ---- data ---------------------------------------------------------------------------------

class TrainDataset(Dataset):
    """Items are keyed by (epoch, index) so a view depends only on (seed, epoch, index)."""

    def __init__(self, samples: list[Sample], pre: PreprocessConfig, aug: AugmentConfig, seed: int):
        self.samples, self.pre, self.aug, self.seed = samples, pre, aug, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        s = self.samples[i]
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
    """The epoch's batches of (epoch, index) keys: a permutation fixed by (seed, epoch).

    The last partial batch is dropped (a batch of 1 breaks BatchNorm) unless it is the only one.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    count = max(1, n // batch_size)
    return [[(epoch, i) for i in order[b * batch_size : (b + 1) * batch_size]] for b in range(count)]


def make_loader(dataset: Dataset, batches: list, workers: int) -> DataLoader:
    # An explicit generator keeps the loader from drawing on the global torch RNG.
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                      generator=torch.Generator().manual_seed(0), pin_memory=torch.cuda.is_available())


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
        model.get_classifier().train()


def wrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Where DistributedDataParallel would wrap the model."""
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def is_main_process() -> bool:
    """Only the main process writes checkpoints, metrics and logs (rank 0 under DDP)."""
    return True


def amp_settings(amp: str, device: str) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether to use a GradScaler)."""
    if amp == "auto":
        # bf16 is a clear win on GPUs; on CPUs it is often no faster and costs precision.
        amp = "bf16" if device == "cuda" else "none"
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
    train_samples, val = load_splits(cfg.data)
    run_dir = prepare_run_dir(cfg)
    seed_everything(cfg.seed)
    log.info("data %s: train %s; val %s", cfg.data, _describe(train_samples), _describe(val))
    det_cfg = dataclasses.replace(detector_config(cfg), data_fingerprint=fingerprint(train_samples + val))
    model = build_model(cfg.model, cfg.pretrained, cfg.pretrained_file, det_cfg).to(device)
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
    run = Run(
        cfg=cfg, run_dir=run_dir, device=device, det_cfg=det_cfg, model=model, optimizer=optimizer,
        scheduler=scheduler, scaler=torch.amp.GradScaler("cuda") if use_scaler else None,
        ema=EMA(model, cfg.ema_decay) if cfg.ema_decay else None, amp_dtype=amp_dtype,
        loss_fn=torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight),
        dataset=TrainDataset(train_samples, det_cfg.preprocess, aug, cfg.seed), val=val,
        batches_per_epoch=batches_per_epoch,
    )
    if cfg.resume:
        resume(run)
    run.model = wrap_model(run.model)
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
    from training.evaluate import collect_logits
    from training.metrics import roc_auc

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
    batches = epoch_batches(len(run.dataset), cfg.batch_size, cfg.seed, p.epoch)
    loader = make_loader(run.dataset, batches[p.batch :], cfg.workers)
    set_train_mode(model, cfg.freeze_backbone)
    params = [q for q in model.parameters() if q.requires_grad]
    autocast = (torch.autocast(run.device, dtype=run.amp_dtype) if run.amp_dtype is not None
                else contextlib.nullcontext())
    loss_sum, images, start = 0.0, 0, time.perf_counter()
    bar = _progress_bar(cfg, p, len(batches))
    for k, (x, y, errors) in enumerate(loader, start=p.batch):
        report_bad_files(run, errors)
        if (k % cfg.accum_steps) == 0:
            optimizer.zero_grad(set_to_none=True)
        if len(x):
            x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
            with autocast:
                logits = model(x).reshape(-1).float()
            loss = run.loss_fn(logits, y)
            scaled = loss / cfg.accum_steps
            (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
            loss_sum, images = loss_sum + loss.item() * len(y), images + len(y)
        p.batch = k + 1
        if p.batch % cfg.accum_steps and p.batch < len(batches):
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
        rate = images / max(time.perf_counter() - start, 1e-9)
        bar.update(p.batch - bar.n)
        bar.set_postfix(loss=f"{loss_sum / max(images, 1):.4f}", img_s=f"{rate:.1f}")
        if cfg.max_steps is not None and p.step >= cfg.max_steps:
            bar.close()
            return _epoch_stats(run, loss_sum, images, start), True
        if cfg.save_every and p.step % cfg.save_every == 0 and p.batch < len(batches):
            save(run, "last")
    bar.close()
    return _epoch_stats(run, loss_sum, images, start), False


def _progress_bar(cfg: TrainConfig, p: Progress, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=p.batch, desc=f"epoch {p.epoch + 1}/{cfg.epochs}", unit="batch",
                disable=not (cfg.progress and is_main_process()), leave=False)


def _epoch_stats(run: Run, loss_sum: float, images: int, start: float) -> dict[str, float]:
    seconds = time.perf_counter() - start
    return {"train_loss": loss_sum / max(images, 1), "images_per_s": images / max(seconds, 1e-9), "seconds": seconds}


def end_epoch(run: Run, stats: dict[str, float], partial: bool) -> bool:
    """Validate, log, checkpoint; returns True when early stopping says stop."""
    p = run.progress
    metrics, _, _ = validate(run, run.eval_model(), run.det_cfg)
    improved = not partial and metrics["val_auc"] > p.best_auc
    line = {"epoch": p.epoch + 1, "step": p.step, **stats, **metrics,
            "lr": run.optimizer.param_groups[0]["lr"], "skipped_files": len(run.bad_files)}
    if partial:
        line["partial_epoch"] = True
        # A max_steps stop keeps the saved position mid-epoch so --resume carries on;
        # it only writes best/ when there is none, so short smoke runs leave a usable model.
        if resolve_dir(run.run_dir / "best") is None:
            save(run, "best")
        save(run, "last")
    else:
        p.bad_epochs = 0 if improved else p.bad_epochs + 1
        p.best_auc = max(p.best_auc, metrics["val_auc"])
        p.epoch, p.batch = p.epoch + 1, 0
        # best before last: a crash between the two replays this epoch end on resume.
        if improved:
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
    from training.calibrate import calibrate

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
        metrics={**calibrated.metrics, **metrics, "epoch": run.progress.epoch, "step": run.progress.step,
                 "n_train": len(run.dataset), "n_val": len(run.val)},
    )
    calibrated.save(best_dir / CONFIG)
    log.info("calibrated %s: temperature %.3f, threshold %.3f, val AUC %.4f", best_dir,
             calibrated.temperature, calibrated.threshold, metrics["val_auc"])
    return best_dir, metrics["val_auc"]


def train(cfg: TrainConfig) -> TrainResult:
    start = time.perf_counter()
    run = setup(cfg)
    p = run.progress
    while p.epoch < cfg.epochs and not (cfg.max_steps is not None and p.step >= cfg.max_steps):
        stats, hit_max_steps = train_one_epoch(run)
        # A max_steps stop on an epoch's last batch still completes that epoch.
        partial = p.batch < run.batches_per_epoch
        if end_epoch(run, stats, partial) or hit_max_steps:
            break
    best_dir, best_auc = finalize_best(run)
    if run.bad_files:
        log.warning("%d unreadable images were skipped (listed above)", len(run.bad_files))
    return TrainResult(run.run_dir, best_dir, best_auc, p.step, p.epoch, dict(run.bad_files),
                       time.perf_counter() - start)
