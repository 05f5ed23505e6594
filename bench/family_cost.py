"""What the generator-family head costs per picture: the shipped architecture with and without it.

    python -m bench.family_cost [--rounds 3] [--pictures 16] [--batch 8]

The same frozen CLIP ViT-B/16 taps (random weights: the cost, not the answers, is measured) under
the verdict head alone and under the verdict head plus a 6-family head, each run through the
runtime's whole path (`Detector.scores_from_views`: views, model, per-column view aggregation,
calibration) and, for the family model, `attribute_row` on every row as the answers do. Rounds
interleave the two (this machine's speed drifts); prints medians, the ratio and the run's bf16
GEMM ceiling. By arithmetic the head adds 12 x 768 x 6 = 55k multiply-adds to a 17.6 GFLOP view.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from bench.scale_views import gemm_bf16_gflops, natural_picture
from models.core.attribution import attribute_row
from models.core.config import AttributionConfig, DetectorConfig, PreprocessConfig
from models.core.network import build_network
from models.core.preprocess import eval_pixels
from models.core.verdict import label_for
from models.runtime.backends import ModuleBackend
from models.runtime.detector import Detector

FAMILIES = ("2022-mj-dalle2-sd", "gan", "gpt-4o", "kolors-sdxl", "nano-banana-gemini", "sd15")


def detectors(arch: str) -> dict[str, Detector]:
    base = DetectorConfig(arch=arch, head="blocks", blocks=tuple(range(12)), model_kwargs={"num_classes": 512},
                          preprocess=PreprocessConfig(scales=("resized", "native"), undo_upscale=True))
    with_families = dataclasses.replace(base, attribution=AttributionConfig(FAMILIES, threshold=5.0))
    torch.manual_seed(0)
    plain = build_network(base).eval()
    attributed = build_network(with_families).eval()
    attributed.load_state_dict(plain.state_dict(), strict=False)  # the same backbone and verdict head
    return {"verdict only": Detector(base, ModuleBackend(plain, "cpu"), "bench"),
            "verdict + families": Detector(with_families, ModuleBackend(attributed, "cpu"), "bench")}


def timed(det: Detector, pictures, batch: int) -> float:
    """Pictures per second through views, model, aggregation, calibration and attribution."""
    start = time.perf_counter()
    for i in range(0, len(pictures), batch):
        views = [eval_pixels(p, det.config.preprocess) for p in pictures[i : i + batch]]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rows = det.scores_from_views(views)
        for row in rows:
            attribute_row(label_for(row[0], det.config), row, det.config)
    return len(pictures) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="vit_base_patch16_clip_quickgelu_224")
    ap.add_argument("--pictures", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    dets = detectors(args.arch)
    pictures = [natural_picture(640, 480, seed=i) for i in range(args.pictures)]  # two views each
    for det in dets.values():
        timed(det, pictures[:2], 2)  # first-call setup outside the timing
    rates: dict[str, list[float]] = {name: [] for name in dets}
    gemm = []
    names = list(dets)
    for k in range(args.rounds):
        gemm.append(gemm_bf16_gflops())
        for name in names if k % 2 == 0 else names[::-1]:  # alternate who goes first
            rates[name].append(timed(dets[name], pictures, args.batch))
    base = statistics.median(rates["verdict only"])
    print(f"# {args.arch}, bf16 autocast, batch {args.batch}, {args.pictures} pictures of 640x480 (2 views each), "
          f"median of {args.rounds} interleaved rounds; bf16 GEMM ceiling {statistics.median(gemm):.0f} GFLOP/s")
    print("| model | pictures/s | vs verdict only |")
    print("|---|---|---|")
    for name, r in rates.items():
        print(f"| {name} | {statistics.median(r):.2f} | {statistics.median(r) / base:.3f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
