"""Runtime benchmark: images/s of every backend, side by side, with accuracy and the machine's ceiling.

    .venv/bin/python bench/runtimes.py                                  # full CPU run
    .venv/bin/python bench/runtimes.py --models vit_tiny_patch16_224 --batches 1,8 --repeats 3 --seconds 0.5
    .venv/bin/python bench/runtimes.py --device cuda --models vit_small_patch16_224   # GPU backends

Random-weight timm models at 224 px are exported with models.runtime.export (so the runtimes are
the shipped ones), then every backend runs the same inputs. Backends are interleaved within
each repeat (order rotated per repeat) and the table reports medians, so background load on
a shared machine hits every backend alike. `max|dprob|` is the largest probability difference
from eager fp32 on a fixed batch; `%fp32`/`%bf16` divide achieved FLOP/s (FlopCounterMode
FLOPs per image x images/s) by torch.matmul GEMM throughput measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.core.checkpoint import save_model_dir  # noqa: E402
from models.core.config import DetectorConfig, PreprocessConfig  # noqa: E402
from models.core.network import build_network  # noqa: E402
from models.runtime.detector import BACKENDS  # noqa: E402
from models.runtime.export import ExportOptions, export_model  # noqa: E402

CPU_BACKENDS = ("eager", "eager-bf16", "torchscript", "onnx", "onnx-int8", "openvino-fp32", "openvino")
CUDA_BACKENDS = ("eager", "eager-fp16", "eager-bf16", "torchscript", "onnx", "onnx-fp16")
Runner = Callable[[torch.Tensor], np.ndarray]
EAGER_DTYPES = {"eager": None, "eager-bf16": torch.bfloat16, "eager-fp16": torch.float16}


def eager_runner(model: torch.nn.Module, device: str, dtype: torch.dtype | None) -> Runner:
    model = model.to(device).eval()

    @torch.inference_mode()
    def run(x: torch.Tensor) -> np.ndarray:
        ctx = torch.autocast(device, dtype=dtype) if dtype else nullcontext()
        with ctx:
            out = model(x.to(device, non_blocking=True))
        return out.float().reshape(-1).cpu().numpy()

    return run


def build_runners(arch: str, names: tuple[str, ...], device: str, work: Path) -> tuple[dict[str, Runner], float]:
    """Export a random-weight model and load each backend; returns runners and FLOPs per image."""
    torch.manual_seed(0)
    cfg = DetectorConfig(arch=arch, preprocess=PreprocessConfig(img_size=224), version="bench")
    model = build_network(cfg).eval()
    save_model_dir(work / "ckpt", model, cfg)
    flops = flops_per_image(model, 224)  # on CPU, before eager runners move the model
    t0 = time.time()
    export_model(work / "ckpt", work / "exp", ExportOptions(int8="onnx-int8" in names, fp16="onnx-fp16" in names),
                 log=lambda _: None)
    print(f"# {arch}: exported in {time.time() - t0:.1f}s", flush=True)
    runners: dict[str, Runner] = {}
    for name in names:
        if name.startswith("eager"):
            runners[name] = eager_runner(model, device, EAGER_DTYPES[name])
            continue
        try:
            backend = BACKENDS[name](work / "exp", cfg, device)
        except Exception as e:  # e.g. onnxruntime without CUDA: report and keep benchmarking the rest
            print(f"# skip {name}: {str(e)[:160]}", flush=True)
            continue
        runners[name] = backend
    return runners, flops


def flops_per_image(model: torch.nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def gemm_flops(dtype: torch.dtype, device: str, n: int = 1024, seconds: float = 0.5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    calls, start = 0, time.perf_counter()
    while True:
        torch.matmul(a, b)
        calls += 1
        if device == "cuda":
            torch.cuda.synchronize()
        if time.perf_counter() - start >= seconds:
            break
    return 2 * n**3 * calls / (time.perf_counter() - start)


def images_per_second(run: Runner, x: torch.Tensor, seconds: float) -> float:
    calls, start = 0, time.perf_counter()
    while True:
        run(x)  # every runner returns numpy, so GPU work is finished when it returns
        calls += 1
        if time.perf_counter() - start >= seconds:
            break
    return calls * x.shape[0] / (time.perf_counter() - start)


def accuracy(runners: dict[str, Runner], size: int) -> dict[str, float]:
    """Max abs probability difference from eager fp32 on a fixed batch of 8."""
    x = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(1))
    ref = 1 / (1 + np.exp(-np.asarray(runners["eager"](x), dtype=np.float64)))
    out = {}
    for name, run in runners.items():
        p = 1 / (1 + np.exp(-np.asarray(run(x), dtype=np.float64).reshape(-1)))
        out[name] = float(np.max(np.abs(p - ref)))
    return out


def bench_model(arch: str, args: argparse.Namespace, names: tuple[str, ...]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        runners, flops = build_runners(arch, names, args.device, Path(tmp))
        acc = accuracy(runners, 224)
        inputs = {b: torch.randn(b, 3, 224, 224) for b in args.batches}
        for run in runners.values():  # warm-up: first-call allocations and JIT/graph optimisation
            run(inputs[args.batches[0]])
        samples: dict[tuple[str, int], list[float]] = {}
        peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
        order = list(runners)
        for rep in range(args.repeats):
            peaks["fp32"].append(gemm_flops(torch.float32, args.device))
            peaks["bf16"].append(gemm_flops(torch.bfloat16, args.device))
            for b in args.batches:
                for name in order[rep % len(order):] + order[: rep % len(order)]:
                    samples.setdefault((name, b), []).append(images_per_second(runners[name], inputs[b], args.seconds))
            print(f"# {arch}: repeat {rep + 1}/{args.repeats} done", flush=True)
        peak = {k: statistics.median(v) for k, v in peaks.items()}
        print(f"# {arch}: {flops / 1e9:.2f} GFLOP/image; GEMM fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, "
              f"bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s (median of {args.repeats})", flush=True)
        rows = []
        for (name, b), values in samples.items():
            ips = statistics.median(values)
            rows.append(dict(model=arch, backend=name, batch=b, ips=ips, dprob=acc[name],
                             vs_eager=ips / statistics.median(samples[("eager", b)]),
                             pct_fp32=100 * ips * flops / peak["fp32"], pct_bf16=100 * ips * flops / peak["bf16"]))
        return rows


def print_table(rows: list[dict]) -> None:
    print("| model | backend | batch | img/s | x eager | max abs dprob | %fp32 peak | %bf16 peak |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["model"], r["batch"], -r["ips"])):
        print(f"| {r['model']} | {r['backend']} | {r['batch']} | {r['ips']:.1f} | {r['vs_eager']:.2f} | "
              f"{r['dprob']:.1e} | {r['pct_fp32']:.0f}% | {r['pct_bf16']:.0f}% |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vit_tiny_patch16_224,vit_small_patch16_224")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=1.0, help="minimum time per measurement")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--backends", default="", help="comma list (default: all for the device)")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/runtimes.py: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    names = tuple(args.backends.split(",")) if args.backends else (CUDA_BACKENDS if args.device == "cuda"
                                                                    else CPU_BACKENDS)
    if "eager" not in names:
        names = ("eager", *names)  # the reference for speed-up and accuracy columns
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {args.device}; command: {' '.join(sys.argv)}", flush=True)
    rows = []
    for arch in args.models.split(","):
        rows += bench_model(arch, args, names)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
