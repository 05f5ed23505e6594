"""`fakelens serve`: run the BentoML detection service with settings passed as FAKELENS_* env vars.

    fakelens serve --model /tmp/export --host 127.0.0.1 --port 3000
    fakelens serve --model fakelens-detector:latest --max-batch-size 32 --workers 2

It replaces itself with `python -m bentoml serve service.service:Detector` (same PID, so
signals reach the server directly); flags left out keep the env/default values.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

SERVICE = "service.service:Detector"
REPO_ROOT = Path(__file__).resolve().parent.parent


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the detector over HTTP (BentoML, adaptive batching)")
    p.add_argument("--model", help="model/run/export folder or model-store tag (default: FAKELENS_MODEL "
                   "or 'default', the detector that ships with fakelens)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--backend", help="runtime backend (default auto)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--max-batch-size", type=int, help="images per model call (default 32)")
    p.add_argument("--max-latency-ms", type=int, help="batching deadline before a 503 (default 10000)")
    p.add_argument("--max-inflight", type=int, help="concurrent requests per worker before 503 (default 64)")
    p.add_argument("--no-batching", action="store_true", help="run each request alone (benchmark baseline)")
    p.add_argument("--workers", type=int, help="front (decode) worker processes (default 1)")
    p.add_argument("--decode", choices=("auto", "front", "model"),
                   help="where JPEGs are decoded: front workers (Pillow) or the model process (nvJPEG on a GPU); "
                        "auto = model on CUDA, else front")
    p.add_argument("--timeout", type=int, dest="timeout_s", help="request timeout in seconds (default 60)")
    p.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace):
    from service.settings import ServeSettings

    base = ServeSettings.from_env()
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(base)
                 if getattr(args, f.name, None) is not None}
    if args.no_batching:
        overrides["batching"] = False
    return dataclasses.replace(base, **overrides)


def serve_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port),
            "--working-dir", str(REPO_ROOT)]


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.model is not None and "/" in args.model and not Path(args.model).exists():
        raise FileNotFoundError(f"--model {args.model} does not exist; give a model/export folder or a store tag")
    env = {**os.environ, **settings.to_env()}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    cmd = serve_command(args.host, args.port)
    print(f"fakelens serve: {settings.model} on http://{args.host}:{args.port} "
          f"(batching={'on' if settings.batching else 'off'}, max_batch_size={settings.max_batch_size})",
          file=sys.stderr, flush=True)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached
