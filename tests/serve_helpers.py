"""Start and stop a real `fakelens serve` on 127.0.0.1 for the service tests (not fixtures: each module
builds the server it needs)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (the arbiter stops its workers), then make sure."""
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    for child in tree:  # workers run in their own process groups
        if child.is_running():
            child.kill()


@contextlib.contextmanager
def serving(model: Path, workdir: Path, env: dict[str, str]):
    """Yield the base URL of a ready `fakelens serve --model MODEL` with FAKELENS_* settings in `env`.

    BENTOML_HOME is the test's own: BentoML keeps its Prometheus files there, and a shared
    one mixes in the series of every other BentoML server on the machine.
    """
    port = free_port()
    log = workdir / "serve.log"
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO), "BENTOML_HOME": str(workdir / "bentoml")}
    cmd = [sys.executable, "-m", "models.commands", "serve", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop(proc)
