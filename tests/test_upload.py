"""The guard parses an upload once (service/upload.py): BentoML gets the options and an empty placeholder,
the files ride in the scope."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from starlette.requests import Request

from service.routes import Route
from service.upload import (
    UPLOADS,
    BodyLimits,
    ByteBudget,
    canonical_request,
    kept_count,
    kept_upload,
    read_form,
)

ROUTE = Route("/detect_batch", {"images": True}, ("faces",))


def _request(files, data) -> tuple[dict, object]:
    """An ASGI scope and receive for the multipart body httpx builds, sent in 1 KB chunks."""
    req = httpx.Request("POST", "http://test/detect_batch", files=files, data=data)
    body = req.read()
    chunks = [body[i : i + 1024] for i in range(0, len(body), 1024)]
    scope = {"type": "http", "method": "POST", "path": "/detect_batch",
             "headers": [(k.lower().encode(), v.encode()) for k, v in req.headers.items()]}

    async def receive():
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    return scope, receive


async def _guard_then_bentoml(files, data):
    scope, receive = _request(files, data)
    form, body = await read_form(scope, receive, ROUTE, BodyLimits(10**7, 8, 5.0), ByteBudget(10**8))
    inner_scope, inner_receive = canonical_request(scope, receive, form, ROUTE)
    seen = await Request(inner_scope, inner_receive).form()  # what BentoML's MultipartSerde parses
    kept = [kept_upload(inner_scope, "images", i) for i in range(kept_count(inner_scope, "images"))]
    names = [u.filename for u in inner_scope[UPLOADS]["images"]]
    parts = {k: (v.filename, await v.read()) if hasattr(v, "read") else v for k, v in seen.multi_items()}
    await form.close()
    body.release()
    return inner_scope, kept, names, parts


def test_uploads_are_parsed_once_and_reach_the_endpoint_whole_and_in_order():
    payloads = [bytes([i]) * (3000 + 1000 * i) for i in range(3)]  # distinct sizes and contents
    files = [("images", (name, data, "image/jpeg")) for name, data in
             zip(["a.jpg", "x" * 300 + ".png", "bad\x00name.webp"], payloads, strict=True)]
    files.append(("ignored", ("other.jpg", b"zz", "image/jpeg")))  # not a field of the route
    # a thread of its own: an earlier test (the browser's sync API) may leave a loop running in this one
    with ThreadPoolExecutor(1) as pool:
        scope, kept, names, seen = pool.submit(
            lambda: asyncio.run(_guard_then_bentoml(files, {"faces": "true", "junk": "1"}))).result()
    assert kept == payloads  # every byte, in form order, from the guard's own parse
    assert names[0] == "a.jpg" and len(names) == 3  # the route's field only ("ignored" is dropped)
    # BentoML parses the route's text fields and one empty placeholder: no file bytes, no client file names
    assert seen == {"images": ("placeholder", b""), "faces": "true"}
    assert list(scope[UPLOADS]) == ["images"]


def test_without_a_guard_the_endpoint_refuses_to_guess():
    with pytest.raises(RuntimeError, match="no upload guard"):
        kept_count({"type": "http"}, "image")
