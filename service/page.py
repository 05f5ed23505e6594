"""The analyst's page: `/` of the service serves a self-contained HTML/CSS/JS page.

One `fakelens serve` gives both the API and the page. The files live in service/static/
(no CDN, no external fonts or scripts: the machines that run this may have no internet).
`/page/config.json` tells the page what this server offers (its routes and their form
fields, whether API keys are on, the upload limits) so it shows only what works here.

The page and its assets are open even with FAKELENS_API_KEYS set (they hold no data); the
API calls the page makes carry the key the analyst types (see service/guard.py).
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
ASSETS = "/page"  # URL prefix of the page's own files and config
# The browser enforces "self-contained": scripts, styles and requests only from this server;
# images and videos also from the page's own blob: previews and data: heatmap overlays.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                               "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def is_page_request(method: str, path: str) -> bool:
    """GET/HEAD of the page or its assets: open, so a browser can load the key form."""
    return method in ("GET", "HEAD") and (path == "/" or path.startswith(ASSETS + "/"))


def api_routes(service) -> dict[str, list[str]]:
    """route -> the form fields its API method takes, read from the BentoML service."""
    out = {}
    for method in service.apis.values():
        fields = getattr(method.input_spec, "model_fields", {})
        out[method.route] = sorted(fields)
    return out


def page_paths() -> list[str]:
    """Every path the page answers (a fixed set, so the metrics may label each of them)."""
    return ["/", f"{ASSETS}/config.json", *(f"{ASSETS}/{p.name}" for p in STATIC.iterdir() if p.is_file())]


def page_app(service, settings) -> Starlette:
    """The Starlette app mounted at `/` of `service` (BentoML matches it only on its own routes)."""
    config = None

    async def index(_: Request):
        # no-cache: after an upgrade the browser must not keep an old page against a new API
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache", **HEADERS})

    async def page_config(_: Request):
        nonlocal config
        if config is None:
            config = {
                "routes": api_routes(service),
                "api_keys": bool(settings.api_keys),
                "max_bytes": settings.max_bytes,
                "max_batch_items": settings.max_batch_items,
            }
        return JSONResponse(config, headers={"Cache-Control": "no-cache"})

    return Starlette(routes=[
        Route("/", index, methods=["GET", "HEAD"]),
        Route(f"{ASSETS}/config.json", page_config, methods=["GET", "HEAD"]),
        Mount(ASSETS, StaticFiles(directory=STATIC), name="page-assets"),
    ])
