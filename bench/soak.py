"""Soak and burst bench of a real `fakelens serve`: RSS per minute per process, idle latency before/after.

    .venv/bin/python -m bench.soak                          # 15 minutes of mixed load from 16 clients
    .venv/bin/python -m bench.soak --minutes 2 --clients 32 # a burst: is idle latency back afterwards?
    .venv/bin/python -m bench.soak --baseline /tmp/base      # the same run against another checkout first
    .venv/bin/python -m bench.soak --model default           # the shipped CLIP detector, family head included

Starts the service on a random-weight vit_tiny_patch16_224 (224 px, as bench/serve_load.py), or on
`--model` (e.g. `default`: the shipped detector, whose answers carry a generator family), and:
1. idle latency: the median of 10 sequential /detect requests, nothing else running;
2. load: `--clients` closed-loop clients for `--minutes`, a mix of /detect, /detect_batch (4 images),
   face mode, a truncated file and a bad form option, printing once a minute the RSS of every
   process of the server (front, model, other) and the requests answered by status;
3. after the load: idle latency again right away and every 10 s for `--after` seconds.
A leak shows as RSS that keeps rising minute after minute instead of levelling off; a batcher
that does not come back shows as idle latency after the load well above the one before it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does (bench/serve_load.py says why)

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

from bench.serve_load import REPO, process_role, save_model, start, stop, test_images, tree_of, wait_ready


def rss_by_process(pid: int) -> list[tuple[str, int, float]]:
    """(role, pid, RSS MB) of every process of the server's tree."""
    out = []
    for p in tree_of(pid):
        try:
            out.append((process_role(p), p.pid, p.memory_info().rss / 2**20))
        except psutil.NoSuchProcess:
            continue
    return sorted(out)


def idle_latency(url: str, image: bytes, n: int = 10) -> float:
    """Median seconds of `n` sequential /detect requests."""
    times = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for i in range(n):
            t0 = time.perf_counter()
            r = client.post("/detect", files={"image": (f"{i}.jpg", image)})
            r.raise_for_status()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def mixed_request(i: int, images: list[bytes]) -> tuple[str, dict]:
    """The i-th request of the mix: mostly plain /detect, some batches, face mode and bad input."""
    image = images[i % len(images)]
    kind = i % 10
    if kind < 5:
        return "/detect", {"files": {"image": (f"{i}.jpg", image)}}
    if kind < 7:
        return "/detect_batch", {"files": [("images", (f"{i}-{j}.jpg", images[(i + j) % len(images)]))
                                           for j in range(4)]}
    if kind == 7:
        return "/detect", {"files": {"image": (f"{i}.jpg", image)}, "data": {"faces": "true"}}
    if kind == 8:
        return "/detect", {"files": {"image": (f"{i}.jpg", image[: len(image) // 2])}}  # truncated: 422
    return "/explain", {"files": {"image": (f"{i}.jpg", image)}, "data": {"grid": "100"}}  # bad option: 400


async def load(url: str, images: list[bytes], clients: int, seconds: float, pid: int) -> None:
    statuses: Counter = Counter()
    families: Counter = Counter()  # the `family` of the plain /detect answers
    stop_at = time.monotonic() + seconds
    counter = iter(range(10**9))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while time.monotonic() < stop_at:
                path, kw = mixed_request(next(counter), images)
                try:
                    r = await client.post(path, **kw)
                    statuses[r.status_code] += 1
                    if r.status_code == 200 and path == "/detect":
                        families[r.json().get("family") or "null"] += 1
                except httpx.HTTPError:
                    statuses[-1] += 1

        async def reporter() -> None:
            start, minute = time.monotonic(), 0
            while time.monotonic() < stop_at:
                await asyncio.sleep(min(60.0, max(0.0, stop_at - time.monotonic())))
                minute += 1
                procs = ", ".join(f"{role}[{p}] {mb:.0f} MB" for role, p, mb in rss_by_process(pid))
                print(f"  min {minute:2d} ({time.monotonic() - start:4.0f} s): {procs}; answered "
                      f"{dict(sorted(statuses.items()))}; /detect families {dict(sorted(families.items()))}",
                      flush=True)

        await asyncio.gather(reporter(), *(worker() for _ in range(clients)))


def soak(name: str, model: Path, log_dir: Path, repo: Path, args) -> None:
    images = test_images(8)
    proc, url = start("batched", model, log_dir, repo)
    try:
        wait_ready(proc, url, "/readyz")
        before = idle_latency(url, images[0])
        print(f"{name}: idle /detect before the load: {before:.3f} s (median of 10)", flush=True)
        print(f"{name}: at start: " + ", ".join(f"{r}[{p}] {mb:.0f} MB" for r, p, mb in rss_by_process(proc.pid)))
        asyncio.run(load(url, images, args.clients, args.minutes * 60, proc.pid))
        ended = time.monotonic()
        while True:
            after = idle_latency(url, images[0])
            since = time.monotonic() - ended
            print(f"{name}: idle /detect {since:3.0f} s after the load: {after:.3f} s ({after / before:.1f}x before)",
                  flush=True)
            if since >= args.after:
                break
            time.sleep(10)
    finally:
        stop(proc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=15.0, help="minutes of load (default 15)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent closed-loop clients")
    ap.add_argument("--after", type=int, default=60, help="seconds of idle-latency samples after the load")
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout to run first, the same way")
    ap.add_argument("--model", default=None, help="a model to serve (e.g. 'default'); none: a random tiny ViT")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or Path(tmp) / "model"
        if args.model is None:
            save_model(model)
        runs = [("baseline", args.baseline), ("this", REPO)] if args.baseline else [("this", REPO)]
        for name, repo in runs:
            soak(name, model, Path(tmp), repo, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
