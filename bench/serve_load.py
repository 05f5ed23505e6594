"""Load benchmark of the HTTP service: adaptive batching vs batching off vs a naive FastAPI app.

    .venv/bin/python -m bench.serve_load                    # 1,000 requests per setting
    .venv/bin/python -m bench.serve_load --requests 300     # quick run (~4 minutes on 2 cores)
    .venv/bin/python -m bench.serve_load --servers batched,latency50   # show the 50 ms trap

Saves a random-weight vit_tiny_patch16_224 (224 px) model folder to a temp dir, measures
the model alone (eager, batch 1 and batch 32), starts every server as a subprocess on
127.0.0.1, then for 1, 8 and 32 concurrent clients sends the requests in interleaved
rounds (each round visits every server), so drift on the shared machine hits all of them
alike. Prints img/s (median over rounds), p50/p99 latency, 503/other-error counts, peak
RSS of each server's process tree, ratios to the naive baseline and served img/s as a
fraction of the model-only img/s.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SERVERS = {  # name -> (kind, extra env)
    "batched": ("bento", {}),
    "unbatched": ("bento", {"FAKELENS_BATCHING": "0"}),
    "naive": ("naive", {}),
    "latency50": ("bento", {"FAKELENS_MAX_LATENCY_MS": "50"}),
}


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    overloaded: int = 0
    errors: int = 0
    error_statuses: dict[int, int] = field(default_factory=dict)  # -1: transport error


def save_model(folder: Path) -> None:
    import torch

    from models.checkpoint import save_model_dir
    from models.config import DetectorConfig, PreprocessConfig
    from models.network import build_network

    torch.manual_seed(0)
    cfg = DetectorConfig(arch="vit_tiny_patch16_224", preprocess=PreprocessConfig(img_size=224), version="bench")
    save_model_dir(folder, build_network(cfg), cfg)


def model_only(folder: Path, images: list[bytes]) -> dict[int, float]:
    """Images/s of the eager detector itself (decode + preprocess + model), per batch size."""
    from models.preprocess import decode_image
    from models.runtime import load_detector

    det = load_detector(folder, "eager", "cpu")
    decoded = [decode_image(b)[0] for b in images]
    out = {}
    for bs in (1, 32):
        batch = (decoded * (bs // len(decoded) + 1))[:bs]
        det.probabilities(batch)
        reps = max(3, 64 // bs)
        start = time.perf_counter()
        for _ in range(reps):
            det.probabilities(batch)
        out[bs] = bs * reps / (time.perf_counter() - start)
    return out


def test_images(n: int = 8) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name: str, model: Path, log_dir: Path) -> tuple[subprocess.Popen, str]:
    kind, extra = SERVERS[name]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    if kind == "bento":
        cmd = [sys.executable, "-m", "models.commands", "serve", "--model", str(model), "--port", str(port),
               "--device", "cpu"]
    else:
        env["NAIVE_MODEL"] = str(model)
        cmd = [sys.executable, "-m", "uvicorn", "bench.naive_app:app", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning"]
    log = open(log_dir / f"{name}.log", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, probe: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url + probe, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    tree = tree_of(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in tree:
        if p.is_running():
            p.kill()


def tree_of(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class RssSampler(threading.Thread):
    """Peak resident memory of each server's whole process tree, sampled every 200 ms."""

    def __init__(self, pids: dict[str, int]):
        super().__init__(daemon=True)
        self.pids, self.peak = pids, dict.fromkeys(pids, 0)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            for name, pid in self.pids.items():
                rss = 0
                for p in tree_of(pid):
                    try:
                        rss += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                self.peak[name] = max(self.peak[name], rss)


async def load(url: str, images: list[bytes], requests: int, clients: int, tally: Tally) -> None:
    queue = list(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while queue:
                i = queue.pop()
                t0 = time.perf_counter()
                try:
                    r = await client.post("/detect", files={"image": (f"{i}.jpg", images[i % len(images)])})
                    status = r.status_code
                except httpx.HTTPError:
                    status = -1
                if status == 200:
                    tally.latencies.append(time.perf_counter() - t0)
                elif status in (429, 503):
                    tally.overloaded += 1
                else:
                    tally.errors += 1
                    tally.error_statuses[status] = tally.error_statuses.get(status, 0) + 1

        ok_before = len(tally.latencies)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        # img/s counts answered images only: a 503 is not throughput
        tally.rates.append((len(tally.latencies) - ok_before) / (time.perf_counter() - start))


def report(results, peak, model_rates, names, conc) -> None:
    print(f"\nmodel only (eager, same process type): {model_rates[1]:.1f} img/s at batch 1, "
          f"{model_rates[32]:.1f} img/s at batch 32")
    head = f"{'server':<10} {'clients':>7} {'img/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'503s':>5} {'errors':>6} " \
           f"{'peak RSS MB':>11} {'x naive':>7} {'/model b32':>10}"
    print(head)
    print("-" * len(head))
    for c in conc:
        base = statistics.median(results["naive", c].rates) if "naive" in names else None
        for name in names:
            t = results[name, c]
            rate = statistics.median(t.rates)
            lat = np.asarray(t.latencies) * 1000 if t.latencies else np.asarray([float("nan")])
            ratio = f"{rate / base:.2f}" if base else "-"
            print(f"{name:<10} {c:>7} {rate:>7.1f} {np.percentile(lat, 50):>8.1f} {np.percentile(lat, 99):>8.1f} "
                  f"{t.overloaded:>5} {t.errors:>6} {peak[name] / 2**20:>11.0f} {ratio:>7} "
                  f"{rate / model_rates[32]:>10.2f}" + (f"  errors by status {t.error_statuses}" if t.errors else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000, help="requests per server per concurrency setting")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds the requests are split into")
    ap.add_argument("--servers", default="batched,unbatched,naive", help=f"from {sorted(SERVERS)}")
    args = ap.parse_args(argv)
    names = args.servers.split(",")
    unknown = set(names) - set(SERVERS)
    if unknown:
        ap.error(f"unknown servers {sorted(unknown)}; choose from {sorted(SERVERS)}")
    conc = [int(c) for c in args.concurrency.split(",")]
    images = test_images()
    with tempfile.TemporaryDirectory(prefix="fakelens-bench-") as tmp:
        model = Path(tmp) / "model"
        save_model(model)
        model_rates = model_only(model, images)
        procs = {name: start(name, model, Path(tmp)) for name in names}
        try:
            for name, (proc, url) in procs.items():
                wait_ready(proc, url, "/readyz" if SERVERS[name][0] == "bento" else "/docs")
            sampler = RssSampler({name: proc.pid for name, (proc, _) in procs.items()})
            sampler.start()
            results = {(n, c): Tally() for n in names for c in conc}
            for c in conc:
                per_round = max(1, args.requests // args.rounds)
                for name in names:  # warm every server at this concurrency before measuring
                    asyncio.run(load(procs[name][1], images, min(per_round, 2 * c), c, Tally()))
                for _ in range(args.rounds):
                    for name in names:
                        asyncio.run(load(procs[name][1], images, per_round, c, results[name, c]))
                print(f"done: {c} clients", file=sys.stderr, flush=True)
            sampler.done.set()
            sampler.join()
        finally:
            for proc, _ in procs.values():
                stop(proc)
    report(results, sampler.peak, model_rates, names, conc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
