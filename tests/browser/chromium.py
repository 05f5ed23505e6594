"""Where the browser tests find Chromium and how they start it (shared with screenshots.py).

Debian's `chromium` package, driven by Playwright through `executable_path`: `playwright install`
downloads browsers from a CDN, which machines without internet cannot reach.
"""

from __future__ import annotations

import os
import shutil

# Flags for a quiet headless run in containers: no sandbox (root in CI), no GPU, and no
# background traffic to Google's services (the page must work with no internet at all).
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage"]  # containers often give /dev/shm only 64 MB


def find_chromium() -> str | None:
    """FAKELENS_CHROMIUM, else Debian's /usr/bin/chromium, else chromium on PATH."""
    for candidate in (os.environ.get("FAKELENS_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def launch(playwright, executable: str):
    return playwright.chromium.launch(executable_path=executable, args=ARGS)
