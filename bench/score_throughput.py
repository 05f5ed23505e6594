"""Batch-scoring throughput: the local engine's img/s against the model alone, in the same run.

    .venv/bin/python bench/score_throughput.py                   # 2,000 JPEGs at 256 px
    .venv/bin/python bench/score_throughput.py --n 400 --rounds 3 # quick run (docs/performance-scoring.md)

Writes a folder of JPEGs, saves a random-weight vit_tiny_patch16_224 (224 px) model folder
and exports it (so `--backend auto` picks the shipped CPU runtime: OpenVINO/ONNX Runtime;
`--no-export` keeps the eager checkpoint). Each round then measures, back to back:

- model-only: the same detector's backend on pre-decoded, pre-cropped tensors in batches of
  `--batch-size` (the ceiling: no file reading, decoding, cropping or writing);
- engine: `service.score.score_files` on the folder into a fresh JSONL (read, decode and
  crop in worker threads, model, fsync'd writes and commits), with the detector preloaded.

The order alternates each round and medians are reported, so background load on a shared
machine hits both alike. The ratio engine/model-only is the pipeline's efficiency (1.0 =
decoding fully hidden behind inference).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.checkpoint import save_model_dir  # noqa: E402
from models.config import DetectorConfig, PreprocessConfig  # noqa: E402
from models.network import build_network  # noqa: E402
from models.prepare import Limits  # noqa: E402
from models.preprocess import DEFAULT_MAX_PIXELS, decode_image, eval_views  # noqa: E402
from models.runtime import load_detector  # noqa: E402
from service.inputs import discover_inputs  # noqa: E402
from service.score import ScoreOptions, default_workers, read_and_prepare, score_files  # noqa: E402


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


def build_model(work: Path, export: bool) -> Path:
    torch.manual_seed(0)
    cfg = DetectorConfig(
        arch="vit_tiny_patch16_224", preprocess=PreprocessConfig(img_size=224), version="bench"
    )
    save_model_dir(work / "model", build_network(cfg).eval(), cfg)
    if not export:
        return work / "model"
    try:
        from models.export import ExportOptions, export_model
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
    ap.add_argument(
        "--no-export", action="store_true", help="score the eager checkpoint instead of an export"
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="fakelens-bench-") as tmp:
        work = Path(tmp)
        write_jpegs(work / "images", args.n, args.size)
        source = build_model(work, export=not args.no_export)
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
            "engine": lambda: engine(detector, inputs, work / "out.jsonl", opts),
        }
        results: dict[str, list[float]] = {name: [] for name in measure}
        for r in range(args.rounds):
            order = list(measure)[r % 3 :] + list(measure)[: r % 3]  # rotate so drift hits all alike
            for name in order:
                rate = measure[name]()
                results[name].append(rate)
                print(f"round {r + 1}: {name:10s} {rate:8.1f} img/s", file=sys.stderr)

        m, d, e = (statistics.median(results[k]) for k in ("model-only", "decode-only", "engine"))
        info = detector.info
        print(f"\nmodel vit_tiny_patch16_224 @224, backend {info['backend']} on {info['device']}, {args.n} JPEGs "
              f"{args.size}px, batch {args.batch_size}, {workers} decode threads, "
              f"torch threads {torch.get_num_threads()}, median of {args.rounds} rounds")  # fmt: skip
        print("| measurement | img/s (median) | rounds |")
        print("|---|---:|---|")
        rows = (
            ("model-only (pre-decoded tensors)", "model-only"),
            ("decode-only (read + decode + crop, threads)", "decode-only"),
            ("local engine (decode + model + write)", "engine"),
        )
        for label, key in rows:
            rates = results[key]
            print(f"| {label} | {statistics.median(rates):.1f} | {', '.join(f'{x:.1f}' for x in rates)} |")
        # On a CPU-only box decoding and inference share the cores, so even perfect overlap
        # cannot beat doing both jobs' CPU work back to back: 1 / (1/model + 1/decode).
        print(f"| CPU-shared ceiling 1/(1/model + 1/decode) | {1 / (1 / m + 1 / d):.1f} | |")
        print(f"| **ratio engine / model-only** | **{e / m:.2f}** | |")


if __name__ == "__main__":
    main()
