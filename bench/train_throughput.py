"""Training-throughput benchmark: images/s of the training step, side by side, with ratios.

    .venv/bin/python bench/train_throughput.py                      # defaults: a ~5 minute CPU run
    .venv/bin/python bench/train_throughput.py --steps 3 --batch-size 8 --repeats 3 --variants eager-fp32,eager-bf16
    .venv/bin/python bench/train_throughput.py --device cuda --batch-size 128 --steps 20 \
        --sections synthetic --peak-tflops 989                      # GPU: adds model FLOP utilisation

Two sections, each printing its own table:

* synthetic: the model's full train step (forward under autocast, BCE loss, backward,
  clip, AdamW step) on one random in-memory batch, for each variant of {eager, compile} x
  {fp32, bf16 autocast}. torch.compile is paid once before timing (its seconds are shown).
  Variants run interleaved inside each repeat; the table holds medians and the ratio to
  eager-fp32. FLOPs per image come from torch.utils.flop_counter.FlopCounterMode on the
  forward pass x 3 (forward + backward); with --peak-tflops the MFU column divides the
  achieved FLOP/s by that peak (H100/H200 SXM bf16 dense: ~989 TFLOP/s).
* loader: real `fakelens train` runs (`python -m training`, one epoch on demo data written
  to a temp folder) through the real DataLoader, 1 process vs 2 under torchrun (gloo, one
  thread each, so both use the same 2 cores) and fp32 vs bf16; the figures are the loop's
  own metrics.jsonl line: train seconds per epoch, images/s and data_wait_fraction.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

# Before torch starts OpenMP: spinning worker threads collapse when other processes share
# the cores (measured on the shared 2-core dev box: 2.7 vs 91 img/s for the same step).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.core.config import DetectorConfig, PreprocessConfig  # noqa: E402
from models.core.network import build_network  # noqa: E402

VARIANTS = ("eager-fp32", "eager-bf16", "compile-fp32", "compile-bf16")


# ---- synthetic in-memory batches ------------------------------------------------------------

def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / len(x)


class Stepper:
    """One variant's model, optimizer and batch; step() is one full training step."""

    def __init__(self, name: str, arch: str, img_size: int, batch: int, device: str):
        self.name, self.device = name, device
        torch.manual_seed(0)
        cfg = DetectorConfig(arch=arch, preprocess=PreprocessConfig(img_size=img_size))
        self.model = build_network(cfg).to(device).train()
        self.flops = forward_flops(self.model, torch.randn(1, 3, img_size, img_size, device=device)) * 3
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.x = torch.randn(batch, 3, img_size, img_size, device=device)
        self.y = (torch.arange(batch, device=device) % 2).float()
        self.fn = torch.compile(self.model) if name.startswith("compile") else self.model
        self.autocast = torch.autocast(device, dtype=torch.bfloat16) if name.endswith("bf16") else nullcontext()
        start = time.perf_counter()
        self.step()  # the first step pays for compilation and allocator warm-up
        self.step()
        self.warmup_s = time.perf_counter() - start

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with self.autocast:
            logits = self.fn(self.x).reshape(-1).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, self.y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        if self.device == "cuda":
            torch.cuda.synchronize()

    def images_per_s(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * len(self.x) / (time.perf_counter() - start)


def synthetic_section(args: argparse.Namespace) -> None:
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants {unknown}: choose from {', '.join(VARIANTS)}")
    print(f"# synthetic: {args.model} @ {args.img_size} px, batch {args.batch_size}, {args.steps} steps x "
          f"{args.repeats} interleaved repeats, device {args.device}, {torch.get_num_threads()} threads", flush=True)
    steppers = []
    for name in names:
        steppers.append(Stepper(name, args.model, args.img_size, args.batch_size, args.device))
        print(f"#   built {name} (warm-up incl. compile: {steppers[-1].warmup_s:.1f} s)", flush=True)
    rates: dict[str, list[float]] = {s.name: [] for s in steppers}
    for r in range(args.repeats):
        for s in steppers[r % len(steppers):] + steppers[: r % len(steppers)]:  # rotate the order
            rates[s.name].append(s.images_per_s(args.steps))
    base = statistics.median(rates[names[0]])
    header = f"{'variant':<14}{'img/s':>9}{'s/1k img':>10}{'x ' + names[0]:>17}{'TFLOP/s':>9}{'warmup s':>10}"
    print(header + (f"{'MFU':>8}" if args.peak_tflops else ""))
    for s in steppers:
        med = statistics.median(rates[s.name])
        tflops = med * s.flops / 1e12
        line = f"{s.name:<14}{med:>9.2f}{1000 / med:>10.1f}{med / base:>17.2f}{tflops:>9.3f}{s.warmup_s:>10.1f}"
        print(line + (f"{100 * tflops / args.peak_tflops:>7.1f}%" if args.peak_tflops else ""))
    print(f"# train FLOPs per image (3 x forward, FlopCounterMode): {steppers[0].flops / 1e9:.2f} GFLOP")


# ---- the real loader: `python -m training` for one epoch ------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_once(procs: int, amp: str, args: argparse.Namespace, data: Path, out: Path) -> dict:
    train_args = ["-m", "training", "--data", str(data), "--out", str(out), "--model", args.loader_model,
                  "--img-size", str(args.img_size), "--epochs", "1", "--batch-size", str(args.loader_batch_size),
                  "--workers", str(args.workers), "--amp", amp, "--device", "cpu", "--no-progress",
                  "--save-every", "1000000"]
    threads = max(1, args.threads // procs)
    if procs == 1:
        argv = [sys.executable, *train_args]
    else:
        argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
                "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *train_args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"training run failed:\n{proc.stderr[-4000:]}")
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])


def loader_section(args: argparse.Namespace) -> None:
    from training.demo_data import write_demo_dataset

    configs = [(1, "none"), (1, "bf16"), (2, "none")]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "demo"
        write_demo_dataset(data, n=args.demo_n, seed=0)
        print(f"# loader: `python -m training` 1 epoch, {args.loader_model} @ {args.img_size} px, global batch "
              f"{args.loader_batch_size}, demo data n={args.demo_n}, --workers {args.workers}, "
              f"{args.loader_repeats} interleaved repeats, {args.threads} threads in all", flush=True)
        lines: dict[tuple, list[dict]] = {c: [] for c in configs}
        for r in range(args.loader_repeats):
            for c in configs[r % len(configs):] + configs[: r % len(configs)]:
                lines[c].append(train_once(*c, args, data, Path(tmp) / f"run-{c[0]}-{c[1]}-{r}"))
    base = statistics.median(m["images_per_s"] for m in lines[configs[0]])
    print(f"{'processes':<10}{'amp':<6}{'img/s':>9}{'s/epoch':>9}{'x 1-proc fp32':>15}{'data_wait':>11}")
    for (procs, amp), ms in lines.items():
        ips = statistics.median(m["images_per_s"] for m in ms)
        secs = statistics.median(m["seconds"] for m in ms)
        wait = statistics.median(m["data_wait_fraction"] for m in ms)
        print(f"{procs:<10}{'bf16' if amp == 'bf16' else 'fp32':<6}{ips:>9.1f}{secs:>9.2f}{ips / base:>15.2f}"
              f"{wait:>11.1%}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="synthetic,loader", help="comma list of synthetic, loader")
    p.add_argument("--model", default="vit_small_patch16_224", help="timm model of the synthetic section")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8, help="batch of the synthetic section")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for the MFU column (H100/H200: 989)")
    p.add_argument("--loader-model", default="vit_tiny_patch16_224", help="timm model of the loader section")
    p.add_argument("--loader-batch-size", type=int, default=16, help="global batch of the loader section")
    p.add_argument("--loader-repeats", type=int, default=2)
    p.add_argument("--demo-n", type=int, default=160, help="demo images for the loader section")
    p.add_argument("--workers", type=int, default=1, help="loader workers per training process")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="CPU threads in all (synthetic: this many; loader: split over the processes)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    if not sections <= {"synthetic", "loader"}:
        raise SystemExit(f"--sections {args.sections!r}: choose from synthetic, loader")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    torch.set_num_threads(args.threads)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  torch {torch.__version__}  "
          f"{torch.cuda.get_device_name(0) if args.device == 'cuda' else 'CPU'}  "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}", flush=True)
    if "synthetic" in sections:
        synthetic_section(args)
    if "loader" in sections:
        if args.device == "cuda":
            print("# loader section: CPU only here (1 vs 2 processes needs the same cores for both)")
        else:
            loader_section(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
