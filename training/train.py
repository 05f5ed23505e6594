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
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.core.atomic import resolve_dir
from models.core.checkpoint import CONFIG, WEIGHTS, load_model_dir, save_model_dir
from models.core.config import DetectorConfig
from models.core.metrics import roc_auc
from models.core.preprocess import decode_image, file_view, normalize_views
from models.runtime.backends import ModuleBackend
from models.runtime.detector import Detector
from training import distributed, scale_rule
from training.attribution import fit_attribution
from training.calibrate import calibrate
from training.evaluate import collect_logits
from training.features import sample_key
from training.frozen import cached_logits
from training.loader import WaitClock, timed
from training.model_prep import grad_sync, is_main_process, set_train_mode, unwrap
from training.run import Progress, Run, TrainResult, save, setup
from training.train_config import TrainConfig

log = logging.getLogger("fakelens.train")


def validate(run: Run, model: torch.nn.Module, det_cfg: DetectorConfig) -> tuple[dict[str, float], np.ndarray,
                                                                                np.ndarray, list]:
    """Val AUC and loss through the service's own preprocessing (or the cached eval views of a
    frozen backbone); (metrics, logits, labels, the val samples those belong to)."""
    if run.features is not None:
        logits, labels, kept = cached_logits(model, run.features, run.val, run.device)
    else:
        detector = Detector(config=det_cfg, backend=ModuleBackend(model, run.device), source="training")
        logits, labels, kept, errors = collect_logits(detector, run.val, run.cfg.val_batch_size)
        report_bad_files(run, errors)
    if len(set(np.asarray(labels).tolist())) < 2:
        raise ValueError("fewer than two classes of val images could be decoded; see the skipped files above")
    z, y = torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(labels, dtype=torch.float64)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y).item()
    return {"val_auc": float(roc_auc(labels, logits)), "val_loss": loss}, np.asarray(logits), np.asarray(labels), kept


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
    metrics, logits, labels, kept = validate(run, model.to(run.device), det_cfg)
    det_cfg, logits, labels, groups = fit_scale_rule(det_cfg, kept, logits, labels)
    # Several sources (several --data, or a manifest's source column): balance the threshold over them.
    calibrated = calibrate(det_cfg, logits, labels, groups if len(set(groups)) > 1 else None)
    if run.cfg.families == "auto" and calibrated.head == "blocks" and not calibrated.attribution.families:
        model, calibrated = fit_attribution(model, calibrated, readable_train(run), kept,
                                            token_reader(run, model), run.cfg.feature_views if run.features else 0,
                                            run.cfg.seed, run.cfg.family_rule, run.cfg.family_keep)
        if calibrated.attribution.families:
            save_model_dir(best_dir, model, calibrated)  # the family head joins the weights before the version
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


def token_reader(run: Run, model: torch.nn.Module):
    """Block tokens of samples for the family head: the feature cache of a frozen backbone, else the
    model's own (adapted) taps on each file's eval crop."""
    if run.features is not None:
        cache = run.features
        return lambda samples, view: np.stack([cache.get(sample_key(s), view) for s in samples]).astype(np.float32)
    pre, device, size = run.det_cfg.preprocess, run.device, run.cfg.val_batch_size

    @torch.inference_mode()
    def through_model(samples: list, view: int) -> np.ndarray:
        out = []
        for i in range(0, len(samples), size):
            x = np.stack([file_view(decode_image(s.path)[0], pre) for s in samples[i : i + size]])
            out.append(model.taps(normalize_views(torch.from_numpy(x), pre).to(device)).float().cpu().numpy())
        return np.concatenate(out)

    return through_model


def readable_train(run: Run) -> list:
    """The train samples whose files decoded (the cache's or the loop's record of unreadable ones)."""
    samples = list(run.dataset.samples)
    if run.features is not None:
        return [s for s in samples if sample_key(s) not in run.features.errors]
    return [s for s in samples if s.path not in run.bad_files]


def fit_scale_rule(det_cfg: DetectorConfig, val: list, logits: np.ndarray, labels: np.ndarray):
    """Where val holds pictures in both views (a resized file and a native crop of one picture),
    choose the native view's weight on them and calibrate on one combined logit per picture, as
    the service will compute it. Otherwise each file is a picture, at the config's default rule."""
    pre = det_cfg.preprocess
    if not (set(pre.scales) == {"resized", "native"} and scale_rule.has_both_views(val)):
        return det_cfg, logits, labels, [s.source for s in val]
    weight, table = scale_rule.choose_native_weight(val, logits)
    z, y, groups = scale_rule.picture_logits(val, logits, weight)
    log.info("scale policy: native view weight %.2f (val AUC by weight, pictures with both views: %s)", weight, table)
    det_cfg = dataclasses.replace(det_cfg, preprocess=dataclasses.replace(pre, native_weight=weight),
                                  metrics={**det_cfg.metrics, "scale_rule": {"native_weight": weight,
                                                                             "val_auc_by_weight": table}})
    return det_cfg, z, y, groups


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
