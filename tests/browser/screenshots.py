"""Screenshots of the analyst's page for the README, with real answers from a real server.

    python tests/browser/screenshots.py --model RUN_OR_EXPORT --out docs/ FILE [FILE ...]

Starts `fakelens serve --model ...` on loopback, uploads the files through the page in
Debian's chromium at desktop (1280 px) and phone (390 px) width, and writes
page-desktop.png and page-phone.png, quantised to 256 colours so they stay small.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image
from playwright.sync_api import sync_playwright

from tests.browser.chromium import find_chromium, launch
from tests.serve_helpers import free_port, stop

REPO = Path(__file__).resolve().parents[2]
VIEWS = {"desktop": ({"width": 1280, "height": 1100}, {}), "phone": ({"width": 390, "height": 1500},
                                                                    {"is_mobile": True, "has_touch": True})}


def serve(model: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "models.commands", "serve", "--model", model, "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"server not ready; see {log}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args()
    proc, url = serve(args.model, args.out / "page-serve.log")
    try:
        with sync_playwright() as p:
            browser = launch(p, find_chromium())
            for name, (viewport, extra) in VIEWS.items():
                context = browser.new_context(viewport=viewport, **extra)
                page = context.new_page()
                page.goto(url + "/")
                page.wait_for_selector("body[data-ready='1']")
                page.set_input_files("#file-input", [str(f) for f in args.files])
                page.wait_for_function("n => document.querySelectorAll('article.card').length === n"
                                       " && !document.querySelector('.card.pending')", arg=len(args.files))
                shot = args.out / f"page-{name}.png"
                page.screenshot(path=str(shot))
                Image.open(shot).convert("RGB").quantize(256).save(shot, optimize=True)
                print(f"{shot}: {shot.stat().st_size // 1024} KiB")
                context.close()
            browser.close()
    finally:
        stop(proc)
        (args.out / "page-serve.log").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
