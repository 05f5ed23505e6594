"""Front-process memory under big concurrent uploads: peak and retained RSS of `fakelens serve`.

    python bench/upload_memory.py [--clients 8] [--request-mb 60] [--repo PATH]

Starts `fakelens serve` on a tiny random model, then CLIENTS threads each POST one
/detect_batch of REQUEST_MB of random bytes (30 files; not images, so the model never runs
and what is measured is the upload path). RSS of every server process is sampled every
50 ms; the report gives the front (HTTP) worker's growth at peak and after the uploads,
plus the statuses answered (503 = refused by the upload byte budget, to retry).
`--repo` serves another checkout (e.g. an older commit) for a before/after comparison
on the same machine in one sitting.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.serve_helpers import free_port, stop  # noqa: E402

FILES = 30


def tiny_model(folder: Path) -> Path:
    import torch

    from models.core.checkpoint import save_model_dir
    from models.core.config import DetectorConfig, PreprocessConfig
    from models.core.network import build_network

    torch.manual_seed(0)
    cfg = DetectorConfig(arch="vit_tiny_patch16_224", model_kwargs=dict(depth=2, embed_dim=32, num_heads=2,
                         patch_size=8), preprocess=PreprocessConfig(img_size=32), version="bench")
    save_model_dir(folder, build_network(cfg), cfg)
    return folder


def front_pid(server: psutil.Process) -> int:
    """The HTTP worker: the child whose command line names the public service, not the model one."""
    for child in server.children(recursive=True):
        cmd = " ".join(child.cmdline())
        if "fakelens-model" not in cmd and ("--service-name" in cmd or "worker" in cmd):
            return child.pid
    raise RuntimeError("front worker not found")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--request-mb", type=int, default=60)
    ap.add_argument("--repo", default=str(REPO), help="checkout to serve (default: this one)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="upload-mem-"))
    model = tiny_model(work / "model")
    port = free_port()
    repo = Path(args.repo)
    # --repo may point at an older checkout (before/after runs): use whichever CLI module it has.
    module = next((m for m, f in (("models.commands", "models/commands.py"), ("fakelens", "fakelens/cli.py"))
                   if (repo / f).exists()), "service.cli")
    env = {**os.environ, "PYTHONPATH": str(repo), "BENTOML_HOME": str(work / "bentoml"),
           "FAKELENS_MAX_REQUEST_BYTES": str((args.request_mb + 4) * 2**20)}
    proc = subprocess.Popen([sys.executable, "-m", module, "serve", "--model", str(model), "--port", str(port),
                             "--device", "cpu"], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        front = psutil.Process(front_pid(psutil.Process(proc.pid)))
        size = args.request_mb * 2**20 // FILES
        files = [("images", (f"{i}.bin", os.urandom(size))) for i in range(FILES)]
        base = front.memory_info().rss
        peak, stop_sampling = [base], threading.Event()

        def sample() -> None:
            while not stop_sampling.is_set():
                peak[0] = max(peak[0], front.memory_info().rss)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with ThreadPoolExecutor(args.clients) as pool:
            codes = Counter(pool.map(lambda _: httpx.post(f"{url}/detect_batch", files=files, timeout=300).status_code,
                                     range(args.clients)))
        time.sleep(2)
        stop_sampling.set()
        sampler.join()
        after = front.memory_info().rss
        mib = 2**20
        print(f"{args.clients} x {args.request_mb} MB /detect_batch on {module} from {repo}: statuses {dict(codes)}")
        print(f"front worker RSS: {base / mib:.0f} MiB before, +{(peak[0] - base) / mib:.0f} MiB at peak, "
              f"+{(after - base) / mib:.0f} MiB kept after")
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
