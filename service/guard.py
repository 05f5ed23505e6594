"""ASGI middleware in front of the detection endpoints: keys, admission, body checks.

It runs before BentoML parses the multipart body, so bad requests are answered with an
actionable 4xx instead of reaching code that would turn them into 500s:
- API keys (401) when FAKELENS_API_KEYS is set; /livez, /readyz, /metrics and the page's
  own GETs (`/`, `/page/...`: no data, and the browser needs them to ask for a key) stay open;
- admission: more than `max_inflight` detection requests in flight -> 503 + Retry-After,
  and any 503/429 answered downstream also gets Retry-After;
- Content-Type must be multipart/form-data (415); the body is read up to its byte
  limit (413) and checked to carry the expected file field(s) (400/422). Text form values
  never reach BentoML, which would otherwise try to download them as URLs.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import UploadFile
from starlette.requests import Request

from service.errors import (
    BadRequest,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
    error_response,
)
from service.page import is_page_request

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
# route -> (form field, how many files it may carry: 1 or "many")
ENDPOINTS = {"/detect": ("image", 1), "/detect_batch": ("images", "many"),
             "/explain": ("image", 1), "/detect_video": ("video", 1)}
# routes whose single upload has its own byte limit (a settings field) instead of max_bytes
UPLOAD_LIMITS = {"/detect_video": "max_video_bytes"}
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file bytes


class GuardMiddleware:
    def __init__(self, app, settings) -> None:
        self.app = app
        self.settings = settings
        self.keys = tuple(k.encode() for k in settings.api_keys)
        self.inflight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        try:
            if self.keys and path not in OPEN_PATHS and not is_page_request(scope["method"], path):
                self.check_key(scope)
            if path not in ENDPOINTS or scope["method"] != "POST":
                return await self.app(scope, receive, send)
            if self.inflight >= self.settings.max_inflight:
                raise Overloaded(
                    f"the server is busy ({self.inflight} requests in flight); retry after the Retry-After seconds"
                )
        except ServiceError as err:
            return await error_response(err)(scope, receive, send)
        self.inflight += 1
        try:
            await self.guarded(scope, receive, send, path)
        finally:
            self.inflight -= 1

    async def guarded(self, scope, receive, send, path: str) -> None:
        try:
            body = await self.read_body(scope, receive, path)
            await self.check_form(scope, body, path)
        except ServiceError as err:
            return await error_response(err)(scope, receive, send)
        await self.app(scope, replay(body, then=receive), add_retry_after(send))

    def check_key(self, scope) -> None:
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key", b"")
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        if not any(hmac.compare_digest(given, key) for key in self.keys):
            raise Unauthorized(
                "a valid API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
            )

    def limit(self, path: str) -> int:
        if path in UPLOAD_LIMITS:
            return getattr(self.settings, UPLOAD_LIMITS[path]) + MULTIPART_OVERHEAD
        if ENDPOINTS[path][1] == 1:
            return self.settings.max_bytes + MULTIPART_OVERHEAD
        return self.settings.max_request_bytes

    async def read_body(self, scope, receive, path: str) -> bytes:
        headers = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        field = ENDPOINTS[path][0]
        if ctype != "multipart/form-data":
            raise UnsupportedMediaType(
                f"Content-Type {ctype or '(none)'!r} is not accepted; send multipart/form-data with the "
                f"file in field '{field}', e.g. curl -F {field}=@photo.jpg URL{path}"
            )
        limit = self.limit(path)
        declared = headers.get(b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise too_large(int(declared), limit, path)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("the client disconnected before the body was sent")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(size, limit, path)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def check_form(self, scope, body: bytes, path: str) -> None:
        field, count = ENDPOINTS[path]
        request = Request(scope, replay(body))
        try:
            form = await request.form()
        except Exception as e:  # python-multipart raises several unrelated types
            raise BadRequest(f"the multipart body could not be parsed ({e}); let your HTTP client build it") from None
        try:
            values = form.getlist(field)
            example = f"curl -F {field}=@photo.jpg URL{path}"
            if not values:
                raise Unprocessable(f"field '{field}' is missing; send the image(s) as file field '{field}': {example}",
                                    kind="missing_field")
            if not all(isinstance(v, UploadFile) for v in values):
                raise Unprocessable(f"field '{field}' must be a file upload, not a text value: {example}",
                                    kind="not_a_file")
            if count == 1 and len(values) > 1:
                raise Unprocessable(f"{path} takes one file but got {len(values)}; use /detect_batch with "
                                    "repeated 'images' fields for several images", kind="too_many_files")
            if count != 1 and len(values) > self.settings.max_batch_items:
                raise PayloadTooLarge(f"{len(values)} images in one request; send at most "
                                      f"{self.settings.max_batch_items} per /detect_batch call")
        finally:
            await form.close()


def too_large(size: int, limit: int, path: str = "") -> PayloadTooLarge:
    if path in UPLOAD_LIMITS:
        what, knob = "file", "FAKELENS_" + UPLOAD_LIMITS[path].upper()
    else:
        what, knob = "image", "FAKELENS_MAX_BYTES / FAKELENS_MAX_REQUEST_BYTES"
    return PayloadTooLarge(
        f"the request body is {size:,}+ bytes, above the limit of {limit:,}; send a smaller {what} "
        f"(or raise {knob})"
    )


def replay(body: bytes, then=None):
    """An ASGI receive that hands over the buffered body, then defers to the real one."""
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return await then() if then is not None else {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def add_retry_after(send):
    """Overload answered further in (BentoML's 503/429) also tells the client when to retry."""

    async def wrapped(message):
        if message["type"] == "http.response.start" and message["status"] in (429, 503):
            headers = list(message.get("headers", []))
            if not any(k.lower() == b"retry-after" for k, _ in headers):
                headers.append((b"retry-after", str(Overloaded.retry_after_s).encode()))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped
