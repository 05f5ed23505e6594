"""What the scale policy costs per picture: the second (native) view and the upscale estimate.

    python -m bench.scale_views [--arch vit_base_patch16_clip_quickgelu_224] [--rounds 3]

Three policies over the same pictures, interleaved round by round (this machine's speed drifts):
- native only (detectors before issue 17): one native centre crop per picture;
- resized + native on 256 px pictures (the shared datasets' scale): one view, the native view adds
  nothing there;
- resized + native on 1600x1200 pictures (what people upload): a resized and a native view, and
  the spectrum-free upscale estimate (round trips of a 256 px grey crop).
Prints pictures/s end to end (view cutting + model), the model's share, and the ratio to native
only, with the run's bf16 GEMM ceiling. Random weights: the cost, not the verdicts, is measured.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from models.core.config import DetectorConfig, PreprocessConfig
from models.core.network import build_backbone
from models.core.preprocess import eval_pixels
from models.runtime.backends import ModuleBackend
from models.runtime.detector import Detector


def natural_picture(width: int, height: int, seed: int) -> Image.Image:
    """1/f noise in colour: detail down to the pixel, like a camera picture (so not 'upscaled')."""
    rng = np.random.default_rng(seed)
    fy, fx = np.meshgrid(np.fft.fftfreq(height), np.fft.rfftfreq(width), indexing="ij")
    amp = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(width, height))
    chans = []
    for _ in range(3):
        spec = amp * np.exp(2j * np.pi * rng.random(amp.shape))
        x = np.fft.irfft2(spec, s=(height, width))
        chans.append((x - x.mean()) / (x.std() + 1e-9) * 40 + 128)
    return Image.fromarray(np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8))


def gemm_bf16_gflops(n: int = 1024, seconds: float = 0.5) -> float:
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def timed(det: Detector, pictures: list[Image.Image], batch: int) -> tuple[float, float]:
    """(pictures/s end to end, share of the time in the model)."""
    start, model_time = time.perf_counter(), 0.0
    for i in range(0, len(pictures), batch):
        views = [eval_pixels(p, det.config.preprocess) for p in pictures[i : i + batch]]
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            det.logits_from_views(views)
        model_time += time.perf_counter() - t
    total = time.perf_counter() - start
    return len(pictures) / total, model_time / total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="vit_base_patch16_clip_quickgelu_224")
    ap.add_argument("--pictures", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    base = DetectorConfig(arch=args.arch)
    model = build_backbone(base).eval()
    backend = ModuleBackend(model, "cpu")
    legacy = Detector(base, backend, "bench")
    multi = Detector(DetectorConfig(arch=args.arch, preprocess=PreprocessConfig(scales=("resized", "native"),
                                                                                  undo_upscale=True)), backend, "bench")
    small = [natural_picture(256, 256, i) for i in range(args.pictures)]
    large = [natural_picture(1600, 1200, i) for i in range(args.pictures)]
    cases = {"native only, 1600x1200": (legacy, large), "resized + native, 256x256": (multi, small),
             "resized + native, 1600x1200": (multi, large)}
    views = {name: sum(len(eval_pixels(p, det.config.preprocess)) for p in pics) / len(pics)
             for name, (det, pics) in cases.items()}
    timed(legacy, small[:2], 2)  # warm-up
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    ceilings = []
    for _ in range(args.rounds):
        ceilings.append(gemm_bf16_gflops())
        for name, (det, pics) in cases.items():
            results[name].append(timed(det, pics, args.batch))
    ref = statistics.median(r[0] for r in results["native only, 1600x1200"])
    print(f"# {args.arch}, bf16 autocast, batch {args.batch}, {args.pictures} pictures, median of {args.rounds} "
          f"interleaved rounds; bf16 GEMM ceiling {statistics.median(ceilings):.0f} GFLOP/s")
    print("| policy, pictures | views/picture | pictures/s | model share | vs native only |")
    print("|---|---|---|---|---|")
    for name in cases:
        rate = statistics.median(r[0] for r in results[name])
        share = statistics.median(r[1] for r in results[name])
        print(f"| {name} | {views[name]:.2f} | {rate:.2f} | {share:.0%} | {rate / ref:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
