"""Batch-scoring throughput: the local engine's img/s against the model alone, in the same run.

    .venv/bin/python bench/score_throughput.py                   # 2,000 JPEGs at 256 px
    .venv/bin/python bench/score_throughput.py --n 400 --rounds 3 # quick run (docs/performance-scoring.md)

Writes a folder of JPEGs, saves a random-weight `--arch` (vit_tiny_patch16_224, 224 px) model folder
and exports it (so `--backend auto` picks the shipped CPU runtime: OpenVINO/ONNX Runtime;
`--no-export` keeps the eager checkpoint). Each round then measures, back to back:

- model-only: the same detector's backend on pre-decoded, pre-cropped tensors in batches of
  `--batch-size` (the ceiling: no file reading, decoding, cropping or writing);
- engine: `service.score.score_files` on the folder into a fresh JSONL (read, decode and
  crop to uint8 in worker processes or threads (`--decode`), normalise + model, fsync'd
  writes and commits), with the detector preloaded; one row per decode mode.

The order alternates each round and medians are reported, so background load on a shared
machine hits both alike. The ratio engine/model-only is the pipeline's efficiency (1.0 =
decoding fully hidden behind inference).
"""

from __future__ import annotations

import os

# Before torch is imported: spin-waiting OpenMP threads collapse throughput ~30x on a busy
# shared host (docs/performance-training.md); the CLI sets the same default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The scorer's decode workers (forkserver/spawn) re-run this file as __mp_main__ before each
# task: keep them at what `fakelens score`'s own workers import (no torch), or every engine
# run with --decode processes would pay a torch import per worker and the bench would
# measure this script, not the scorer.
if __name__ != "__mp_main__":
    import torch

    from models.core.checkpoint import save_model_dir
    from models.core.config import DetectorConfig, PreprocessConfig
    from models.core.network import build_network
    from models.core.preprocess import DEFAULT_MAX_PIXELS, decode_image, eval_views
    from models.runtime.loader import load_detector
    from models.runtime.prepare import Limits
    from service.inputs import discover_inputs
    from service.score import ScoreOptions, default_workers, read_and_prepare, score_files


def write_jpegs(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """Photo-like JPEGs (smooth colour fields plus grain), so decode cost is realistic, not noise-bound."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        base = np.asarray(
            Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16
        )
        grain = rng.integers(-12, 13, (size, size, 3), dtype=np.int16)
        Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8)).save(
            folder / f"{i:05d}.jpg", quality=90
        )


def build_model(work: Path, export: bool, arch: str = "vit_tiny_patch16_224") -> Path:
    torch.manual_seed(0)
    cfg = DetectorConfig(
        arch=arch, preprocess=PreprocessConfig(img_size=224), version="bench"
    )
    save_model_dir(work / "model", build_network(cfg).eval(), cfg)
    if not export:
        return work / "model"
    try:
        from models.runtime.export import ExportOptions, export_model
    except ImportError:
        return work / "model"
    export_model(work / "model", work / "export", ExportOptions(version="bench"), log=lambda line: None)
    return work / "export"


def model_only(detector, batches: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for batch in batches:
        detector.view_logits(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def decode_only(inputs: list[str], cfg, workers: int) -> float:
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: read_and_prepare(p, cfg, Limits(max_pixels=DEFAULT_MAX_PIXELS)), inputs))
    return len(inputs) / (time.perf_counter() - start)


def engine(detector, inputs: list[str], out: Path, opts: ScoreOptions) -> float:
    start = time.perf_counter()
    score_files(inputs, out, opts, detector=detector)
    return len(inputs) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="number of JPEGs")
    ap.add_argument("--size", type=int, default=256, help="JPEG side in pixels")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0, help="decode threads (0 = default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="vit_tiny_patch16_224", help="timm model (random weights)")
    ap.add_argument("--decode", default="processes,threads",
                    help="engine decode modes to measure, interleaved (processes, threads)")
    ap.add_argument("--decode-on", default="workers",
                    help="where JPEGs are decoded, each measured per decode mode: workers (Pillow), device "
                         "(bytes to the model's device: nvJPEG on CUDA; the workers read headers only)")
    ap.add_argument(
        "--no-export", action="store_true", help="score the eager checkpoint instead of an export"
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="fakelens-bench-") as tmp:
        work = Path(tmp)
        write_jpegs(work / "images", args.n, args.size)
        source = build_model(work, export=not args.no_export, arch=args.arch)
        detector = load_detector(source, args.backend, args.device)
        inputs = discover_inputs([str(work / "images")])
        pre = detector.config.preprocess
        views = [eval_views(decode_image(p)[0], pre) for p in inputs]
        batches = [
            torch.from_numpy(np.concatenate(views[i : i + args.batch_size]))
            for i in range(0, len(views), args.batch_size)
        ]
        opts = ScoreOptions(
            str(source),
            args.backend,
            args.device,
            args.batch_size,
            args.workers,
            overwrite=True,
            progress=False,
        )
        model_only(detector, batches[:2])  # warm-up: first-call allocations and graph setup

        workers = args.workers or default_workers()
        measure = {
            "model-only": lambda: model_only(detector, batches),
            "decode-only": lambda: decode_only(inputs, detector.config, workers),
        }
        for mode in args.decode.split(","):
            for place in args.decode_on.split(","):
                mode_opts = dataclasses.replace(opts, decode=mode, decode_on=place)
                key = f"engine-{mode}" + ("" if place == "workers" else f"-{place}")
                measure[key] = lambda o=mode_opts: engine(detector, inputs, work / "out.jsonl", o)
        results: dict[str, list[float]] = {name: [] for name in measure}
        for r in range(args.rounds):
            k = r % len(measure)
            order = list(measure)[k:] + list(measure)[:k]  # rotate so drift hits all alike
            for name in order:
                rate = measure[name]()
                results[name].append(rate)
                print(f"round {r + 1}: {name:18s} {rate:8.1f} img/s", file=sys.stderr)

        m, d = (statistics.median(results[k]) for k in ("model-only", "decode-only"))
        info = detector.info
        print(f"\nmodel {args.arch} @224, backend {info['backend']} on {info['device']}, {args.n} JPEGs "
              f"{args.size}px, batch {args.batch_size}, {workers} decode workers, "
              f"torch threads {torch.get_num_threads()}, median of {args.rounds} rounds")  # fmt: skip
        print("| measurement | img/s (median) | x model-only | rounds |")
        print("|---|---:|---:|---|")
        labels = {
            "model-only": "model-only (pre-decoded, pre-normalised tensors)",
            "decode-only": "decode-only (read + decode + crop to uint8, threads)",
            "engine-processes": "local engine, decode in processes",
            "engine-threads": "local engine, decode in threads",
            "engine-processes-device": "local engine, JPEGs decoded on the model's device, headers in processes",
            "engine-threads-device": "local engine, JPEGs decoded on the model's device, headers in threads",
        }
        for key, rates in results.items():
            med = statistics.median(rates)
            print(f"| {labels.get(key, key)} | {med:.1f} | {med / m:.2f} | {', '.join(f'{x:.1f}' for x in rates)} |")
        # On a CPU-only box decoding and inference share the cores, so even perfect overlap
        # cannot beat doing both jobs' CPU work back to back: 1 / (1/model + 1/decode).
        print(f"| CPU-shared ceiling 1/(1/model + 1/decode) | {1 / (1 / m + 1 / d):.1f} | "
              f"{1 / (1 / m + 1 / d) / m:.2f} | |")
        from bench.gpu_bench import ceiling_line

        print(ceiling_line(build_network(detector.config).eval(), 224, m, args.device))


if __name__ == "__main__":
    main()
