"""Static int8 vs the float runtimes of one real export: verdicts (AUC, FPR at the threshold) and speed.

    .venv/bin/python -m models.runtime.quantize /tmp/exp --data ../shared/datasets/realfake-dev/manifest.csv
    .venv/bin/python bench/int8_verdicts.py /tmp/exp --data ../shared/datasets/realfake-dev/manifest.csv \\
        --split test --batch 32 --rounds 3

For each backend (fp32 ORT, the CPU default OpenVINO bf16, and the static int8 runtimes)
scores the split's images through `Detector.probabilities_from_views` and prints AUC and
FPR at the shipped threshold (`models.core.verdict.is_flagged`), then times each backend on the
same pre-cut uint8 views, interleaved in rounds (medians and ratios to fp32 and bf16 in one run).
"""

from __future__ import annotations

import os

# Before torch is imported: spin-waiting OpenMP threads collapse throughput ~30x on a busy
# shared host (docs/performance-training.md); the CLI sets the same default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.core.dataset import list_samples  # noqa: E402
from models.core.metrics import roc_auc  # noqa: E402
from models.core.preprocess import ImageError, decode_image, eval_pixels  # noqa: E402
from models.runtime.loader import load_detector  # noqa: E402
from models.runtime.quantize import fpr_at_threshold  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--backends", default="onnx,openvino,openvino-int8,onnx-int8-static")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    views, labels = [], []
    dets = {name: load_detector(args.export, name, "cpu") for name in args.backends.split(",")}
    pre = next(iter(dets.values())).config.preprocess
    for s in list_samples(args.data, split=args.split):
        try:
            views.append(eval_pixels(decode_image(s.path)[0], pre))
            labels.append(s.label)
        except (ImageError, OSError):
            continue
    labels = np.asarray(labels)
    batches = [views[i : i + args.batch] for i in range(0, len(views), args.batch)]
    cfg = next(iter(dets.values())).config

    probs = {n: np.concatenate([d.probabilities_from_views(b) for b in batches]) for n, d in dets.items()}
    rates: dict[str, list[float]] = {n: [] for n in dets}
    timed = batches[: max(1, 256 // args.batch)]
    for r in range(args.rounds):
        names = list(dets)
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            for b in timed:
                dets[name].logits_from_views(b)
            rates[name].append(sum(len(b) for b in timed) / (time.perf_counter() - start))

    from bench.gpu_bench import gemm_tflops  # after the timing: torch's import is not in it

    ceiling = gemm_tflops("cpu", 0.5)
    ref = "onnx" if "onnx" in dets else names[0]
    bf16 = "openvino" if "openvino" in dets else ref
    print(f"\n{args.export}: {cfg.arch}, {args.split} split, {len(labels)} images ({int((labels == 0).sum())} real), "
          f"threshold {cfg.threshold:.3f}; speed: batch {args.batch}, median of {args.rounds} interleaved rounds; "
          f"bf16 GEMM ceiling of this run {ceiling:.2f} TFLOP/s")
    print(f"| backend | AUC | AUC change vs {ref} | FPR at threshold | FPR move (points) | max abs dprob | img/s | "
          f"x {ref} | x {bf16} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    auc_ref, fpr_ref = roc_auc(labels, probs[ref]), fpr_at_threshold(labels, probs[ref], cfg)
    speed_ref, speed_bf16 = statistics.median(rates[ref]), statistics.median(rates[bf16])
    for name in dets:
        auc, fpr, speed = roc_auc(labels, probs[name]), fpr_at_threshold(labels, probs[name], cfg), \
            statistics.median(rates[name])
        print(f"| {dets[name].backend.name} | {auc:.4f} | {auc - auc_ref:+.4f} | {100 * fpr:.2f}% | "
              f"{100 * (fpr - fpr_ref):+.2f} | {np.max(np.abs(probs[name] - probs[ref])):.4f} | {speed:.1f} | "
              f"{speed / speed_ref:.2f} | {speed / speed_bf16:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
