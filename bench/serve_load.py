"""Load benchmark of the HTTP service: adaptive batching vs batching off vs a naive FastAPI app.

    .venv/bin/python -m bench.serve_load                    # 1,000 requests per setting
    .venv/bin/python -m bench.serve_load --requests 300     # quick run (~4 minutes on 2 cores)
    .venv/bin/python -m bench.serve_load --servers batched,latency50   # show the 50 ms trap
    .venv/bin/python -m bench.serve_load --servers batched --baseline /tmp/base --concurrency 32
        # adds server "base": the same service run from another checkout (before/after, one run)
    .venv/bin/python -m bench.serve_load --servers batched --per-request 16 --client-procs 2
        # /detect_batch with 16 images per request, load from 2 client processes
    .venv/bin/python -m bench.serve_load --servers front-decode,model-decode --per-request 8
        # JPEGs decoded by Pillow in the front vs sent as bytes and decoded in the model process

Saves a random-weight vit_tiny_patch16_224 (224 px) model folder to a temp dir, measures
the model alone (eager, batch 1 and batch 32), starts every server as a subprocess on
127.0.0.1, then for 1, 8 and 32 concurrent clients sends the requests in interleaved
rounds (each round visits every server), so drift on the shared machine hits all of them
alike; the model-only batch-32 rate is measured again between rounds (servers idle), so
the "served / model-only" ratio compares figures taken under the same load. Prints img/s
(median over rounds), p50/p99 latency, 503/other-error counts, peak RSS of each server's
process tree, ratios to the naive baseline and served img/s as a fraction of model-only.

It also prints the CPU each side spends per answered image (psutil CPU times of the
server's front workers, its model process and the rest of its tree, and of the load
generator itself), summed over the measured rounds. CPU ms per image does not depend on how
busy the shared machine is the way img/s does, and it says what a front costs: a front
worker that needs F ms of CPU per image cannot pass more than 1000/F img/s to the model,
however fast the GPU behind it.
"""

from __future__ import annotations

import os

# Before torch is imported: spin-waiting OpenMP threads collapse throughput ~30x on a busy
# shared host (docs/performance-training.md); the CLI sets the same default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import asyncio
import io
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
    # where JPEGs are decoded (service/settings.py): bytes to the model process vs Pillow in the front
    "model-decode": ("bento", {"FAKELENS_DECODE": "model"}),
    "front-decode": ("bento", {"FAKELENS_DECODE": "front"}),
}


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)  # the service's own elapsed_ms (front: decode + model call)
    rates: list[float] = field(default_factory=list)
    overloaded: int = 0
    errors: int = 0
    error_statuses: dict[int, int] = field(default_factory=dict)  # -1: transport error
    images: int = 0  # answered images (a /detect_batch request answers several)
    cpu_s: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds in the measured rounds

    def merge(self, other: Tally) -> None:
        self.latencies += other.latencies
        self.server_ms += other.server_ms
        self.overloaded += other.overloaded
        self.errors += other.errors
        self.images += other.images
        for k, v in other.error_statuses.items():
            self.error_statuses[k] = self.error_statuses.get(k, 0) + v
        for k, v in other.cpu_s.items():
            self.cpu_s[k] = self.cpu_s.get(k, 0.0) + v


def save_model(folder: Path, arch: str = "vit_tiny_patch16_224") -> None:
    import torch

    from models.core.checkpoint import save_model_dir
    from models.core.config import DetectorConfig, PreprocessConfig
    from models.core.network import build_network

    torch.manual_seed(0)
    cfg = DetectorConfig(arch=arch, preprocess=PreprocessConfig(img_size=224), version="bench")
    save_model_dir(folder, build_network(cfg), cfg)


class ModelOnly:
    """Images/s of the eager detector itself (crop + normalise + model on decoded images)."""

    def __init__(self, folder: Path, images: list[bytes], device: str = "cpu", batch: int = 32):
        from models.core.preprocess import decode_image
        from models.runtime.loader import load_detector

        self.det = load_detector(folder, "eager", device)
        self.decoded = [decode_image(b)[0] for b in images]
        self.batch = batch
        self.rates: dict[int, list[float]] = {1: [], batch: []}

    def measure(self, sizes=None) -> None:
        sizes = sizes or (1, self.batch)
        for bs in sizes:
            batch = (self.decoded * (bs // len(self.decoded) + 1))[:bs]
            self.det.probabilities(batch)
            reps = max(3, 64 // bs)
            start = time.perf_counter()
            for _ in range(reps):
                self.det.probabilities(batch)
            self.rates[bs].append(bs * reps / (time.perf_counter() - start))

    def median(self) -> dict[int, float]:
        return {bs: statistics.median(r) for bs, r in self.rates.items()}


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


def start(name: str, model: Path, log_dir: Path, repo: Path = REPO, device: str = "cpu") -> tuple[subprocess.Popen, str]:
    kind, extra = SERVERS[name]
    port = free_port()
    # Own BENTOML_HOME per server: BentoML keeps its Prometheus multiprocess files there, and a
    # shared one would mix every server's (and any other local server's) batch histograms.
    # The repo first, then what the caller had (gpu_check.sh puts carried wheels there).
    path = os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "BENTOML_HOME": str(log_dir / f"bentoml-{name}"), **extra}
    if kind == "bento":
        cmd = [sys.executable, "-m", "models.commands", "serve", "--model", str(model), "--port", str(port),
               "--device", device]
    else:
        env["NAIVE_MODEL"] = str(model)
        cmd = [sys.executable, "-m", "uvicorn", "bench.naive_app:app", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning"]
    log = open(log_dir / f"{name}.log", "wb")
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = log_dir / f"{name}.log"  # shown when the server dies before it is ready
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, probe: str, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(proc.log_path).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"server for {url} exited with {proc.returncode}; its log ends:\n{tail}")
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
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # already gone (e.g. it exited at start-up)
            pass
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


def request_files(images: list[bytes], i: int, per_request: int) -> list:
    if per_request == 1:
        return [("image", (f"{i}.jpg", images[i % len(images)]))]
    return [("images", (f"{i}-{j}.jpg", images[(i + j) % len(images)])) for j in range(per_request)]


async def load(url: str, images: list[bytes], requests: int, clients: int, tally: Tally,
               per_request: int = 1) -> None:
    """`requests` requests from `clients` closed-loop clients; /detect_batch when per_request > 1."""
    queue = list(range(requests))
    route = "/detect" if per_request == 1 else "/detect_batch"
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while queue:
                i = queue.pop()
                t0 = time.perf_counter()
                try:
                    r = await client.post(route, files=request_files(images, i, per_request))
                    status = r.status_code
                except httpx.HTTPError:
                    status = -1
                if status == 200:
                    tally.latencies.append(time.perf_counter() - t0)
                    answer = r.json()
                    tally.images += len(answer["results"]) if per_request > 1 else 1
                    elapsed = answer.get("elapsed_ms")
                    if elapsed is not None:
                        tally.server_ms.append(float(elapsed))
                elif status in (429, 503):
                    tally.overloaded += 1
                else:
                    tally.errors += 1
                    tally.error_statuses[status] = tally.error_statuses.get(status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(clients)))


def load_in_process(url: str, images: list[bytes], requests: int, clients: int, per_request: int) -> Tally:
    """One client process's share of a round (its own event loop, its own GIL); returns its tally."""
    tally, cpu0 = Tally(), time.process_time()
    asyncio.run(load(url, images, requests, clients, tally, per_request))
    tally.cpu_s["client"] = time.process_time() - cpu0
    return tally


def run_round(url: str, images: list[bytes], requests: int, clients: int, tally: Tally, per_request: int,
              pool=None, procs: int = 1, server_pid: int | None = None) -> None:
    """One measured round: img/s into tally.rates, CPU by role into tally.cpu_s."""
    cpu0 = cpu_by_role(server_pid) if server_pid else {}
    start = time.perf_counter()
    if pool is None:
        part = load_in_process(url, images, requests, clients, per_request)
        parts = [part]
    else:
        n = procs
        shares = [requests // n + (k < requests % n) for k in range(n)]
        conc = [max(1, clients // n + (k < clients % n)) for k in range(n)]
        parts = list(pool.map(load_in_process, [url] * n, [images] * n, shares, conc, [per_request] * n))
    wall = time.perf_counter() - start
    cpu1 = cpu_by_role(server_pid) if server_pid else {}
    images_before = tally.images
    for part in parts:
        tally.merge(part)
    for role, seconds in cpu1.items():
        tally.cpu_s[role] = tally.cpu_s.get(role, 0.0) + seconds - cpu0.get(role, 0.0)
    # img/s counts answered images only: a 503 is not throughput
    tally.rates.append((tally.images - images_before) / wall)


def process_role(p: psutil.Process) -> str:
    """front (BentoML worker of the public service), model (DetectorModel's worker) or other."""
    cmd = " ".join(p.cmdline())
    if "_bentoml_impl.worker" not in cmd:
        return "other"
    return "model" if "fakelens-model" in cmd or "DetectorModel" in cmd else "front"


def cpu_by_role(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by a server's process tree, by role."""
    out: dict[str, float] = {}
    for p in tree_of(pid):
        try:
            t = p.cpu_times()
            role = process_role(p)
        except psutil.NoSuchProcess:
            continue
        out[role] = out.get(role, 0.0) + t.user + t.system
    return out


def report(results, peak, model_rates, names, conc) -> None:
    big = max(model_rates)
    print(f"\nmodel only (eager, same process type, median): {model_rates[1]:.1f} img/s at batch 1, "
          f"{model_rates[big]:.1f} img/s at batch {big} (measured between rounds)")
    head = f"{'server':<10} {'clients':>7} {'img/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'503s':>5} {'errors':>6} " \
           f"{'peak RSS MB':>11} {'x naive':>7} {'/model':>10}"
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
                  f"{rate / model_rates[big]:>10.2f}" + (f"  errors by status {t.error_statuses}" if t.errors else ""))


def decode_ms(images: list[bytes], folder: Path) -> float:
    """Median ms the front spends per upload before the model call: decode + crop to uint8 views."""
    from models.core.config import DetectorConfig
    from models.runtime.prepare import prepare

    cfg = DetectorConfig.load(folder / "detector.json")
    times = []
    for _ in range(3):
        for data in images:
            t0 = time.perf_counter()
            prepare(data, cfg)
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def model_metrics(url: str) -> dict[str, float]:
    """Sums and counts of the model process's batch histograms, from the service's /metrics."""
    out: dict[str, float] = {}
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return out
    for line in text.splitlines():
        for name in ("fakelens_model_batch_seconds", "fakelens_model_batch_size"):
            for suffix in ("_sum", "_count"):
                if line.startswith(name + suffix):
                    out[name + suffix] = out.get(name + suffix, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def breakdown(name: str, c: int, t: Tally, before: dict, after: dict, decode: float, model_rate: float) -> None:
    """Where one request's time goes at this concurrency, each part measured (not a profile)."""
    def delta(key):
        return after.get(key, 0.0) - before.get(key, 0.0)

    calls = delta("fakelens_model_batch_seconds_count")
    if not calls or not t.latencies:
        print(f"{name:<10} {c:>7}  (no model metrics scraped from /metrics)")
        return
    batch_ms = 1000 * delta("fakelens_model_batch_seconds_sum") / calls
    batch_n = delta("fakelens_model_batch_size_sum") / calls
    client = 1000 * statistics.median(t.latencies)
    server = statistics.median(t.server_ms) if t.server_ms else float("nan")
    wait = server - decode - batch_ms  # queueing for a batch + the uint8 views' hop to the model process
    print(f"{name:<10} {c:>7} {client:>9.1f} {client - server:>10.1f} {server:>9.1f} {decode:>8.1f} "
          f"{wait:>13.1f} {batch_ms:>9.1f} {batch_n:>6.1f} {batch_ms / batch_n:>8.2f} {1000 / model_rate:>10.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000, help="requests per server per concurrency setting")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds the requests are split into")
    ap.add_argument("--servers", default="batched,unbatched,naive", help=f"from {sorted(SERVERS)}")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout (e.g. `git archive main | tar -x -C DIR`) served as 'base' with defaults")
    ap.add_argument("--arch", default="vit_tiny_patch16_224", help="timm model (random weights)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: the servers' model process and model-only")
    ap.add_argument("--model-batch", type=int, default=32, help="batch size of the model-only reference")
    ap.add_argument("--per-request", type=int, default=1,
                    help="images per request: 1 posts to /detect, more to /detect_batch")
    ap.add_argument("--client-procs", type=int, default=1,
                    help="load-generator processes (the clients are split over them; 1 = in this process)")
    args = ap.parse_args(argv)
    if args.per_request > 1 and "naive" in args.servers.split(","):
        ap.error("the naive app has no /detect_batch: use --servers without naive with --per-request > 1")
    names = args.servers.split(",")
    repos = dict.fromkeys(names, REPO)
    if args.baseline:
        SERVERS["base"] = SERVERS["batched"]
        names.append("base")
        repos["base"] = args.baseline.resolve()
    unknown = set(names) - set(SERVERS)
    if unknown:
        ap.error(f"unknown servers {sorted(unknown)}; choose from {sorted(SERVERS)}")
    conc = [int(c) for c in args.concurrency.split(",")]
    images = test_images()
    with tempfile.TemporaryDirectory(prefix="fakelens-bench-") as tmp:
        model = Path(tmp) / "model"
        save_model(model, args.arch)
        decode = decode_ms(images, model)
        model_only = ModelOnly(model, images, args.device, args.model_batch)
        model_only.measure()
        procs = {name: start(name, model, Path(tmp), repos[name], args.device) for name in names}
        clients = client_pool(args.client_procs)
        try:
            for name, (proc, url) in procs.items():
                wait_ready(proc, url, "/readyz" if SERVERS[name][0] == "bento" else "/docs")
            sampler = RssSampler({name: proc.pid for name, (proc, _) in procs.items()})
            sampler.start()
            results = {(n, c): Tally() for n in names for c in conc}
            metrics = {}
            k = args.per_request
            for c in conc:
                per_round = max(1, args.requests // args.rounds)
                for name in names:  # warm every server at this concurrency before measuring
                    asyncio.run(load(procs[name][1], images, min(per_round, 2 * c), c, Tally(), k))
                before = {n: model_metrics(procs[n][1]) for n in names if SERVERS[n][0] == "bento"}
                for _ in range(args.rounds):
                    for name in names:
                        run_round(procs[name][1], images, per_round, c, results[name, c], k, clients,
                                  args.client_procs, procs[name][0].pid)
                    model_only.measure((args.model_batch,))
                for n in before:
                    metrics[n, c] = (before[n], model_metrics(procs[n][1]))
                print(f"done: {c} clients", file=sys.stderr, flush=True)
            sampler.done.set()
            sampler.join()
        finally:
            if clients is not None:
                clients.shutdown()
            for proc, _ in procs.values():
                stop(proc)
    print(f"\n{k} image(s) per request ({'/detect' if k == 1 else '/detect_batch'}), "
          f"load from {args.client_procs} client process(es)")
    report(results, sampler.peak, model_only.median(), names, conc)
    cpu_report(results, names, conc)
    rates = model_only.median()
    from bench.gpu_bench import ceiling_line

    print(ceiling_line(model_only.det.backend.model, 224, rates[max(rates)], args.device))
    print("\nper request, ms (medians; model columns from the service's batch histograms; "
          "'queue + hop' = server - decode - batch call)")
    print(f"{'server':<10} {'clients':>7} {'client ms':>9} {'HTTP+parse':>10} {'server ms':>9} {'decode':>8} "
          f"{'queue + hop':>13} {'batch ms':>9} {'batch':>6} {'ms/img':>8} {'alone ms/img':>10}")
    for (n, c), (before, after) in metrics.items():
        breakdown(n, c, results[n, c], before, after, decode * k, rates[max(rates)])
    return 0


def client_pool(procs: int):
    if procs <= 1:
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn"))


def cpu_report(results, names, conc) -> None:
    """CPU ms per answered image by role, over the measured rounds (load-independent, unlike img/s)."""
    roles = ("front", "model", "other", "client")
    print("\nCPU ms per answered image (psutil user+system over the measured rounds; "
          "front = the public service's workers, model = DetectorModel's process, client = the load generator)")
    head = f"{'server':<10} {'clients':>7} " + " ".join(f"{r:>8}" for r in roles) + f" {'front img/s/core':>16}"
    print(head)
    print("-" * len(head))
    for c in conc:
        for name in names:
            t = results[name, c]
            per = {r: 1000 * t.cpu_s.get(r, 0.0) / max(t.images, 1) for r in roles}
            cap = f"{1000 / per['front']:>16.0f}" if per["front"] > 0 else f"{'-':>16}"
            print(f"{name:<10} {c:>7} " + " ".join(f"{per[r]:>8.2f}" for r in roles) + cap)


if __name__ == "__main__":
    sys.exit(main())
