"""GPU sections of bench/gpu_check.sh: model-only img/s per execution mode, GPU JPEG decode,
and the batched model path the service and scorer use (uint8 views -> device -> normalise -> model).

    python -m bench.gpu_bench model  --archs vit_small_patch16_224 --batches 1,32,256
    python -m bench.gpu_bench decode --n 1024
    python -m bench.gpu_bench pixels --archs vit_small_patch16_224 --batch 256
    python -m bench.gpu_bench model --device cpu --archs vit_tiny_patch16_224 --batches 1,2 --small  # CPU smoke

Random weights (speed only). Every timed loop ends with a device synchronise; each figure is
the median of `--repeats` timed runs of at least `--seconds` each, interleaved over modes so
clock drift hits all alike. `model` also prints the bf16 GEMM ceiling measured in the same
run (an 8192^3 matmul, or 1024^3 on CPU) and each row's achieved model TFLOP/s against it.
A section that would overrun `--budget-s` prints its remaining rows as skipped, so the
script's outer `timeout` never cuts a table in half.
"""

from __future__ import annotations

import os

# Before torch is imported: spin-waiting OpenMP threads collapse throughput ~30x on a busy
# shared host (docs/performance-training.md); the CLI sets the same default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("eager-fp32", "eager-bf16", "compile-bf16", "cudagraph-bf16")
START = time.monotonic()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rate(fn: Callable[[], object], items: int, device: str, seconds: float) -> float:
    """Items/s of fn over at least `seconds` (after the caller's warm-up)."""
    sync(device)
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if n >= 3 and time.perf_counter() - start >= seconds:
            break
        if n % 8 == 0:
            sync(device)
    sync(device)
    return items * n / (time.perf_counter() - start)


def gemm_tflops(device: str, seconds: float) -> float:
    """bf16 matmul rate: the ceiling the model rows are read against."""
    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    return rate(lambda: a @ b, 1, device, seconds) * 2 * n**3 / 1e12


def model_flops(model: torch.nn.Module, size: int, device: str) -> float:
    """Forward FLOPs per image (2 x MACs), counted by torch's FlopCounterMode at batch 1."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.float().to(device)(x)  # the FLOP count runs where the input is
    return float(counter.get_total_flops())


def ceiling_line(model: torch.nn.Module, size: int, rate_img_s: float, device: str, seconds: float = 0.5) -> str:
    """One line for any bench: the bf16 GEMM ceiling measured now and a model rate against it."""
    ceiling = gemm_tflops(device, seconds)
    flops = model_flops(model, size, device)
    achieved = rate_img_s * flops / 1e12
    return (f"bf16 GEMM ceiling (same run, {device}): {ceiling:.2f} TFLOP/s; model {flops / 1e9:.2f} GFLOP/img, "
            f"so {rate_img_s:.1f} img/s = {achieved:.3f} TFLOP/s = {100 * achieved / ceiling:.0f}% of the ceiling")


def build(arch: str, small: bool) -> torch.nn.Module:
    import timm

    kw = dict(depth=2, embed_dim=64, num_heads=2) if small else {}
    return timm.create_model(arch, pretrained=False, num_classes=1, **kw).eval()


class Runner:
    """One (arch, mode) callable per batch size; compiled/captured lazily, timed by `rate`."""

    def __init__(self, model: torch.nn.Module, mode: str, device: str, size: int):
        self.mode, self.device, self.size = mode, device, size
        dtype = torch.float32 if mode == "eager-fp32" else torch.bfloat16
        self.model = model.to(device, dtype)
        self.dtype = dtype
        self.fns: dict[int, Callable[[], object]] = {}
        if mode == "compile-bf16":
            # dynamic=False: one specialised graph per batch size, as a server with fixed buckets would use
            self.compiled = torch.compile(self.model, dynamic=False)

    def fn(self, batch: int) -> Callable[[], object]:
        if batch in self.fns:
            return self.fns[batch]
        x = torch.randn(batch, 3, self.size, self.size, device=self.device, dtype=self.dtype)
        if self.mode == "compile-bf16":
            def f():
                with torch.inference_mode():
                    return self.compiled(x)
        elif self.mode == "cudagraph-bf16":
            f = capture_graph(self.model, x)
        else:
            def f():
                with torch.inference_mode():
                    return self.model(x)
        for _ in range(3):  # warm-up: compilation, cuDNN/cuBLAS heuristics, allocator
            f()
        sync(self.device)
        self.fns[batch] = f
        return f


def capture_graph(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """The eager bf16 forward captured once as a CUDA graph and replayed: no per-kernel launch cost."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        out = model(x)
    del out
    return graph.replay


def section_model(args) -> None:
    device = args.device
    modes = [m for m in args.modes.split(",") if device == "cuda" or m != "cudagraph-bf16"]
    batches = [int(b) for b in args.batches.split(",")]
    ceiling = gemm_tflops(device, args.seconds)
    print(f"\n## model-only img/s ({device}; {torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU'}), "
          f"random weights, median of {args.repeats}; bf16 GEMM ceiling {ceiling:.1f} TFLOP/s (same run)")
    print("| model | mode | batch | img/s | model TFLOP/s | % of GEMM ceiling | runs |")
    print("|---|---|---:|---:|---:|---:|---|")
    for arch in args.archs.split(","):
        base = build(arch, args.small)
        size = base.pretrained_cfg.get("input_size", (3, 224, 224))[-1] if not args.small else 224
        flops = model_flops(base, size, device)
        results: dict[tuple[str, int], list[float]] = {}
        runners = {}
        for batch in batches:
            for _ in range(args.repeats):
                for mode in modes:
                    key = (mode, batch)
                    if time.monotonic() - START > args.budget_s:
                        results.setdefault(key, [])
                        continue
                    try:
                        if mode not in runners:
                            runners[mode] = Runner(build(arch, args.small) if mode != modes[0] else base,
                                                   mode, device, size)
                        f = runners[mode].fn(batch)
                        results.setdefault(key, []).append(rate(f, batch, device, args.seconds))
                    except Exception as e:  # an OOM or a compile failure is a row, not a dead section
                        print(f"# {arch} {mode} b{batch}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                        results[key] = []
                        if device == "cuda":
                            torch.cuda.empty_cache()
        for batch in batches:
            for mode in modes:
                runs = results.get((mode, batch), [])
                if not runs:
                    print(f"| {arch} | {mode} | {batch} | skipped (budget or error) | | | |")
                    continue
                med = statistics.median(runs)
                tf = med * flops / 1e12
                print(f"| {arch} | {mode} | {batch} | {med:,.0f} | {tf:.1f} | {100 * tf / ceiling:.0f}% | "
                      f"{', '.join(f'{x:,.0f}' for x in runs)} |", flush=True)
        del runners, base
        if device == "cuda":
            torch.cuda.empty_cache()


def photo_jpegs(n: int, size: int, seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs (smooth colour fields plus grain), as bench/score_throughput.py writes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    distinct = min(n, 64)  # decode cost depends on content, not identity: reuse a few distinct files
    for _ in range(distinct):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
        grain = rng.integers(-12, 13, (size, size, 3), dtype=np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return [out[i % distinct] for i in range(n)]


def section_decode(args) -> None:
    """JPEG -> 224 centre crop -> normalised float input: the model process's path (models/runtime/jpeg_decode.py:
    torchvision decode_jpeg on the device, nvJPEG on CUDA) vs the front's (Pillow, threads), and how far
    the device's pixels are from Pillow's (bit-identical on CPU; nvJPEG's IDCT may differ)."""
    from concurrent.futures import ThreadPoolExecutor

    from models.core.config import PreprocessConfig
    from models.core.preprocess import decode_image, eval_pixels, normalize_views
    from models.runtime.jpeg_decode import device_views

    device = args.device
    pre = PreprocessConfig(img_size=224)
    jpegs = photo_jpegs(args.n, args.size)

    def gpu() -> None:
        normalize_views(torch.cat(device_views(jpegs, pre, device)), pre)

    def cpu(pool) -> None:
        views = list(pool.map(lambda j: eval_pixels(decode_image(j)[0], pre), jpegs))
        normalize_views(torch.from_numpy(np.concatenate(views)), pre)

    distinct = jpegs[: min(len(jpegs), 64)]
    dev = torch.cat(device_views(distinct, pre, device)).cpu().to(torch.int16)
    ref = torch.from_numpy(np.concatenate([eval_pixels(decode_image(j)[0], pre) for j in distinct])).to(torch.int16)
    diff = (dev - ref).abs()
    threads = args.threads
    with ThreadPoolExecutor(threads) as pool:
        gpu()
        cpu(pool)
        res: dict[str, list[float]] = {"gpu": [], "cpu": []}
        for _ in range(args.repeats):
            res["gpu"].append(rate(gpu, len(jpegs), device, args.seconds))
            res["cpu"].append(rate(lambda: cpu(pool), len(jpegs), "cpu", args.seconds))
    print(f"\n## JPEG decode + 224 crop + normalise, {len(jpegs)} photo-like {args.size}px JPEGs per call, "
          f"median of {args.repeats}")
    print("| path | img/s | runs |")
    print("|---|---:|---|")
    print(f"| models.runtime.jpeg_decode.device_views(device={device!r}) (torchvision decode_jpeg, batched) | "
          f"{statistics.median(res['gpu']):,.0f} | {', '.join(f'{x:,.0f}' for x in res['gpu'])} |")
    print(f"| Pillow decode_image + eval_pixels, {threads} threads | {statistics.median(res['cpu']):,.0f} | "
          f"{', '.join(f'{x:,.0f}' for x in res['cpu'])} |")
    print(f"pixels vs Pillow ({len(distinct)} files): max abs diff {int(diff.max())} levels, "
          f"{100 * float((diff > 0).float().mean()):.3f}% of values differ")


def section_pixels(args) -> None:
    """The batched model path without HTTP: what the service's model method and the scorer run
    per batch (uint8 views -> device -> normalise -> model), against the model alone."""
    from models.core.config import DetectorConfig, PreprocessConfig
    from models.runtime.backends import ModuleBackend
    from models.runtime.detector import Detector

    device = args.device
    print(f"\n## batched model path (Detector.probabilities_from_views on uint8 views) vs model alone, "
          f"eager fp32 on {device}, batch {args.batch}, median of {args.repeats}")
    print("| model | model alone img/s | pixel path img/s | ratio | runs (alone / path) |")
    print("|---|---:|---:|---:|---|")
    for arch in args.archs.split(","):
        model = build(arch, args.small).to(device)
        det = Detector(DetectorConfig(arch=arch, preprocess=PreprocessConfig(img_size=224)),
                       ModuleBackend(model, device), "bench")
        rng = np.random.default_rng(0)
        views = [rng.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8) for _ in range(args.batch)]
        x = torch.randn(args.batch, 3, 224, 224, device=device)
        alone, path = [], []
        det.view_logits(x)
        det.probabilities_from_views(views)
        run_alone = lambda det=det, x=x: det.view_logits(x)  # noqa: E731
        run_path = lambda det=det, views=views: det.probabilities_from_views(views)  # noqa: E731
        for _ in range(args.repeats):
            alone.append(rate(run_alone, args.batch, device, args.seconds))
            path.append(rate(run_path, args.batch, device, args.seconds))
        a, p = statistics.median(alone), statistics.median(path)
        print(f"| {arch} | {a:,.0f} | {p:,.0f} | {p / a:.2f} | {', '.join(f'{v:,.0f}' for v in alone)} / "
              f"{', '.join(f'{v:,.0f}' for v in path)} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("section", choices=("model", "decode", "pixels"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--archs", default="vit_small_patch16_224,vit_base_patch16_clip_quickgelu_224")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--batches", default="1,32,256")
    ap.add_argument("--batch", type=int, default=256, help="pixels: batch size")
    ap.add_argument("--n", type=int, default=1024, help="decode: JPEGs per call")
    ap.add_argument("--size", type=int, default=256, help="decode: JPEG side")
    ap.add_argument("--threads", type=int, default=16, help="decode: CPU threads for the Pillow row")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=0.5, help="minimum seconds per timed run")
    ap.add_argument("--budget-s", type=float, default=1e9, help="stop starting new measurements after this")
    ap.add_argument("--small", action="store_true", help="2-block models (CPU smoke of the same code paths)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: --device cuda but no CUDA device is visible; use --device cpu for a smoke run",
              file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # "fp32" rows are fp32, not TF32
    {"model": section_model, "decode": section_decode, "pixels": section_pixels}[args.section](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
