"""Score a labelled split with a saved detector and write a report (`fakelens evaluate`).

    fakelens evaluate RUN --data DATA --out REPORT [--split test] [--recalibrate]

REPORT/report.json holds the headline metrics, per-source/per-generator breakdowns and a
robustness grid; REPORT/scores.csv the per-image logits and calibrated scores;
roc.png, reliability.png and score_histogram.png sit beside them. Images go through
models.core.preprocess.decode_image and Detector.logits: the serving path, so there is no
separate evaluation preprocessing to drift from it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models.core.atomic import atomic_write, atomic_write_text
from models.core.attribution import attribute_row, score_rows
from models.core.checkpoint import CONFIG, WEIGHTS
from models.core.config import DetectorConfig
from models.core.dataset import SPLITS, Sample, list_samples
from models.core.metrics import binary_report, group_reports
from models.core.preprocess import ImageError, calibrated_probability, decode_image
from models.core.verdict import label_for
from models.runtime.detector import Detector
from models.runtime.loader import load_detector
from training.attribution import attribution_report
from training.calibrate import calibrate, is_calibrated

Transform = Callable[[Image.Image], Image.Image]
DECODE_WORKERS = 2
# Batches decoded ahead of the model: enough to overlap decode with inference while
# keeping memory bounded for large splits.
PREFETCH_BATCHES = 2


@dataclass(frozen=True)
class EvalConfig:
    model: str
    data: str
    out: str
    split: str | None = None  # None: "test" when the data has one, else every sample
    target_fpr: float | None = None  # None: the model's stored target
    batch_size: int = 64
    # "auto": the backend the service and scorer would pick, so the report measures what is served.
    backend: str = "auto"
    device: str = "auto"
    recalibrate: bool = False
    robustness: bool = True
    plots: bool = True


def _decode(sample: Sample, transform: Transform | None) -> Image.Image | str:
    """The decoded (and optionally perturbed) image, or the reason it cannot be read."""
    try:
        img, _ = decode_image(sample.path)
        return transform(img) if transform is not None else img
    except (ImageError, OSError) as e:
        return str(e) or type(e).__name__


def _decoded_batches(
    samples: Sequence[Sample], batch_size: int, transform: Transform | None, pool: ThreadPoolExecutor
) -> Iterator[list[tuple[Sample, Future]]]:
    pending: deque[list[tuple[Sample, Future]]] = deque()
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        pending.append([(s, pool.submit(_decode, s, transform)) for s in chunk])
        if len(pending) > PREFETCH_BATCHES:
            yield pending.popleft()
    yield from pending


def collect_logits(
    detector: Detector, samples: Sequence[Sample], batch_size: int = 64, transform: Transform | None = None
) -> tuple[np.ndarray, np.ndarray, list[Sample], list[tuple[str, str]]]:
    """Raw verdict logits and labels of every readable sample; unreadable ones go to errors as (path, message)."""
    outputs, labels, kept, errors = collect_outputs(detector, samples, batch_size, transform)
    return outputs[:, 0], labels, kept, errors


def collect_outputs(
    detector: Detector, samples: Sequence[Sample], batch_size: int = 64, transform: Transform | None = None
) -> tuple[np.ndarray, np.ndarray, list[Sample], list[tuple[str, str]]]:
    """Raw outputs (N x C: the verdict logit, then family logits) and labels of every readable sample.

    Decoding runs in a small thread pool a couple of batches ahead of the detector.
    `transform` (PIL -> PIL) is applied after decoding, e.g. a robustness perturbation.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    logits: list[np.ndarray] = []
    kept: list[Sample] = []
    errors: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=DECODE_WORKERS, thread_name_prefix="decode") as pool:
        for batch in _decoded_batches(list(samples), batch_size, transform, pool):
            images = []
            for sample, future in batch:
                result = future.result()
                if isinstance(result, str):
                    errors.append((sample.path, result))
                else:
                    images.append(result)
                    kept.append(sample)
            if images:
                logits.append(detector.outputs(images))
    labels = np.asarray([s.label for s in kept], dtype=np.int64)
    empty = np.zeros((0, detector.config.outputs))
    return (np.concatenate(logits) if logits else empty), labels, kept, errors


def choose_split(samples: list[Sample], split: str | None, data: str) -> tuple[str, list[Sample]]:
    """The samples to score; an empty explicit split is an error that lists what exists."""
    counts = {name: sum(s.split == name for s in samples) for name in SPLITS}
    present = ", ".join(f"{k}={v}" for k, v in counts.items())
    if split is None:
        if counts["test"]:
            return "test", [s for s in samples if s.split == "test"]
        print(
            f"note: {data} has no test split ({present}); scoring all {len(samples)} samples", file=sys.stderr
        )
        return "all", samples
    if split == "all":
        return "all", samples
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS} or 'all'")
    chosen = [s for s in samples if s.split == split]
    if not chosen:
        raise ValueError(f"the {split!r} split of {data} is empty ({present}); choose another with --split")
    return split, chosen


def _calibrate_on_val(detector: Detector, samples: list[Sample], cfg: DetectorConfig, batch_size: int):
    val = [s for s in samples if s.split == "val"]
    if not val:
        raise ValueError("the model needs calibration but the data has no val split; add split=val rows")
    logits, labels, kept, errors = collect_logits(detector, val, batch_size)
    if errors:
        print(f"note: {len(errors)} unreadable val images skipped during calibration", file=sys.stderr)
    groups = [s.source for s in kept]
    return calibrate(cfg, logits, labels, groups if len(set(groups)) > 1 else None), len(labels)


def maybe_calibrate(detector: Detector, samples: list[Sample], cfg: EvalConfig) -> dict[str, Any]:
    """Fit T/threshold on val when asked, never done, or the target FPR changed; persist them."""
    stored = detector.config
    target = stored.target_fpr if cfg.target_fpr is None else cfg.target_fpr
    reason = None
    if cfg.recalibrate:
        reason = "--recalibrate"
    elif not is_calibrated(stored):
        reason = "the stored config was never calibrated"
    elif not math.isclose(target, stored.target_fpr):
        reason = f"--target-fpr {target} differs from the stored {stored.target_fpr}"
    if reason is None:
        return {"fitted": False}
    fitted, n_val = _calibrate_on_val(
        detector, samples, dataclasses.replace(stored, target_fpr=target), cfg.batch_size
    )
    detector.config = fitted
    folder = Path(detector.source)
    # Only checkpoint folders are rewritten: an export or store copy must stay identical to
    # what was verified and versioned, so its calibration changes by re-exporting.
    path = folder / CONFIG if (folder / WEIGHTS).is_file() else None
    if path is not None:
        fitted.save(path)  # atomic: a crash leaves the old or the new config, never half of one
    where = (
        f"wrote {path}" if path else f"not saved ({folder} is not a checkpoint folder; re-export to keep it)"
    )
    print(
        f"calibrated on {n_val} val images ({reason}): T={fitted.temperature:.4f}, "
        f"threshold={fitted.threshold:.6f}; {where}",
        file=sys.stderr,
    )
    return {"fitted": True, "reason": reason, "n_val": n_val, "written_to": str(path) if path else None}


def verdict_shares(labels: np.ndarray, probs: np.ndarray, cfg: DetectorConfig) -> dict[str, dict[str, float]]:
    """Share of each verdict (models/core/verdict.py) among real and among fake images."""
    from models.core.verdict import LABELS, labels_for

    verdicts = np.asarray(labels_for(probs, cfg))
    out = {}
    for name, value in (("real", 0), ("fake", 1)):
        mine = verdicts[np.asarray(labels) == value]
        if mine.size:
            out[name] = {v: float(np.mean(mine == v)) for v in LABELS}
    return out


def headline(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "auc", "ap", "accuracy", "eer", "tpr_at_fpr", "ece", "brier", "tpr", "fpr")
    return {k: report[k] for k in keys}


def robustness_grid(detector: Detector, samples: list[Sample], batch_size: int) -> dict[str, dict[str, Any]]:
    """Headline metrics after each perturbation (applied to real and fake images alike)."""
    from training.robustness import PERTURBATIONS

    grid = {}
    for name, transform in PERTURBATIONS.items():
        logits, labels, _, _ = collect_logits(detector, samples, batch_size, transform)
        probs = calibrated_probability(logits, detector.config.temperature)
        grid[name] = headline(binary_report(labels, probs, detector.config.threshold))
    return grid


def family_answers(outputs: np.ndarray, cfg: DetectorConfig) -> list[dict]:
    """Each image's {"family", "family_score"}, as the service answers them."""
    rows = score_rows(outputs, cfg)
    return [attribute_row(label_for(r[0], cfg), r, cfg) for r in rows]


def write_scores(path: Path, samples: list[Sample], logits: np.ndarray, probs: np.ndarray,
                 answers: list[dict] | None = None) -> None:
    answers = answers or [{"family": None, "family_score": None}] * len(samples)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "source", "generator", "logit", "score", "family", "family_score"])
            for s, z, p, a in zip(samples, logits, probs, answers, strict=True):
                fs = "" if a["family_score"] is None else f"{a['family_score']:.6g}"
                w.writerow([s.path, s.label, s.source, s.generator, f"{z:.9g}", f"{p:.9g}", a["family"] or "", fs])

    atomic_write(path, write)


def build_report(cfg: EvalConfig) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Score the split and compute every metric; returns the report and the raw arrays."""
    detector = load_detector(cfg.model, backend=cfg.backend, device=cfg.device)
    samples = list_samples(cfg.data)
    split, chosen = choose_split(samples, cfg.split, cfg.data)
    calibration = maybe_calibrate(detector, samples, cfg)
    dcfg = detector.config
    outputs, labels, kept, errors = collect_outputs(detector, chosen, cfg.batch_size)
    if not kept:
        raise ValueError(f"none of the {len(chosen)} images in split {split!r} could be read: {errors[:3]}")
    logits = outputs[:, 0]
    probs = calibrated_probability(logits, dcfg.temperature)
    answers = family_answers(outputs, dcfg)
    report: dict[str, Any] = {
        **binary_report(labels, probs, dcfg.threshold),
        "temperature": dcfg.temperature,
        "target_fpr": dcfg.target_fpr,
        "split": split,
        "data": str(cfg.data),
        "model": {**detector.info, "source": detector.source, "data_fingerprint": dcfg.data_fingerprint},
        "calibration": calibration,
        "errors": [{"path": p, "error": m} for p, m in errors],
    }
    if split == "val" and calibration["fitted"]:
        report["warning"] = "calibrated and evaluated on the same val split: numbers are optimistic"
    report["verdicts"] = verdict_shares(labels, probs, dcfg)
    for key, field in (("per_source", "source"), ("per_generator", "generator")):
        groups = [getattr(s, field) for s in kept]
        if any(groups):
            report[key] = group_reports(labels, probs, groups, dcfg.threshold)
            for name, part in report[key].items():
                mask = np.asarray(groups) == name
                part["verdicts"] = verdict_shares(labels[mask], probs[mask], dcfg)
    if dcfg.attribution.families:
        report["attribution"] = attribution_report(kept, answers, dcfg.attribution.families)
    if cfg.robustness:
        report["robustness"] = robustness_grid(detector, kept, cfg.batch_size)
    arrays = {"labels": labels, "logits": logits, "probs": probs, "answers": answers}
    return report, {**arrays, "samples": kept}


def summary_table(report: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "  n/a" if v is None else f"{v:.3f}"

    lines = [
        f"split={report['split']} n={report['n']} (real {report['n_real']}, fake {report['n_fake']}), "
        f"unreadable={len(report['errors'])}, T={report['temperature']:.3f}, threshold={report['threshold']:.4f}",
        f"{'':16}{'AUC':>7}{'AP':>7}{'acc':>7}{'EER':>7}{'TPR@1%':>8}{'TPR@5%':>8}{'ECE':>7}{'Brier':>7}",
    ]
    rows = [("clean", report)] + list((report.get("robustness") or {}).items())
    for name, r in rows:
        t = r["tpr_at_fpr"] or {}
        lines.append(
            f"{name:16}{fmt(r['auc']):>7}{fmt(r['ap']):>7}{fmt(r['accuracy']):>7}{fmt(r['eer']):>7}"
            f"{fmt(t.get('0.01')):>8}{fmt(t.get('0.05')):>8}{fmt(r['ece']):>7}{fmt(r['brier']):>7}"
        )
    att = report.get("attribution")
    if att and att["named_accuracy"] is not None:
        unknown = ", ".join(f"{k} {v:.2f}" for k, v in att["unknown_rate"].items())
        lines.append(f"attribution: right family for {att['named_accuracy']:.3f} of {att['n_named']} named fakes; "
                     f"unknown rate by true family: {unknown}")
    return "\n".join(lines)


def run_evaluation(cfg: EvalConfig) -> dict[str, Any]:
    """Build the report and write report.json, scores.csv and the plots under cfg.out."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    report, arrays = build_report(cfg)
    write_scores(out / "scores.csv", arrays["samples"], arrays["logits"], arrays["probs"], arrays["answers"])
    if cfg.plots:
        from training.plots import write_plots

        report["plots"] = write_plots(out, arrays["labels"], arrays["probs"], report["threshold"])
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, sort_keys=True))
    return report
