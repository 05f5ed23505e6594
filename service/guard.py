"""ASGI middleware in front of the detection endpoints: keys, body, admission, deadline, one error format.

It runs before BentoML parses the multipart body, so bad or hostile requests are answered
with an actionable status in the service's own format instead of reaching code that would
turn them into 500s. For each route in the table derived from the service (service/routes.py):
- API keys (401) when FAKELENS_API_KEYS is set; /livez, /readyz, /metrics and the page's
  own GETs (`/`, `/page/...`: no data, and the browser needs them to ask for a key) stay open;
- the body is read first, without holding an in-flight slot (service/upload.py: 415 for
  a non-multipart body, 413 past the byte or part limits, 408 when it does not arrive within
  FAKELENS_BODY_TIMEOUT_S, 503 past the worker's budget of upload bytes, 400/422 for a form
  without the expected file field(s));
- then admission: more than `max_inflight` requests being scored -> 503 + Retry-After;
- BentoML sees a canonical multipart body (expected fields only, safe file names);
- the whole request must finish within FAKELENS_TIMEOUT_S, else 504 in our format.
Every error response, including 404/405 and anything BentoML answers itself, leaves as
`{"error": {"code", "kind", "message"}}`; /docs.json documents exactly that (service/openapi.py).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from http import HTTPStatus

from service.errors import (
    ERRORS_BY_STATUS,
    BadRequest,
    GatewayTimeout,
    InternalError,
    Overloaded,
    ServiceError,
    Unauthorized,
    error_response,
)
from service.openapi import document
from service.page import is_page_request
from service.routes import OPEN_PATHS, Route
from service.upload import (
    MULTIPART_OVERHEAD,
    BodyLimits,
    ByteBudget,
    ClientGone,
    canonical_request,
    read_form,
)

# Routes whose single upload has its own byte limit (a ServeSettings field) instead of
# max_bytes per file, e.g. a video endpoint: {"/detect_video": "max_video_bytes"}.
UPLOAD_LIMITS: dict[str, str] = {"/detect_video": "max_video_bytes"}


class GuardMiddleware:
    def __init__(self, app, settings, routes: dict[str, Route]) -> None:
        self.app = app
        self.settings = settings
        self.routes = routes
        self.keys = tuple(k.encode() for k in settings.api_keys)
        self.inflight = 0
        self.budget = ByteBudget(settings.max_inflight_bytes)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        send = self.one_error_format(send, path)
        try:
            if self.keys and path not in OPEN_PATHS and not is_page_request(scope["method"], path):
                self.check_key(scope)
        except ServiceError as err:
            return await error_response(err)(scope, receive, send)
        if path == "/docs.json" and method == "GET":
            return await self.openapi(scope, receive, send)
        route = self.routes.get(path)
        if route is None or method != "POST":
            return await self.app(scope, receive, send)
        await self.upload(scope, receive, send, route)

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

    def limits(self, route: Route) -> BodyLimits:
        s = self.settings
        if route.path in UPLOAD_LIMITS:
            name = UPLOAD_LIMITS[route.path]
            return BodyLimits(getattr(s, name) + MULTIPART_OVERHEAD, 1, s.body_timeout_s, f"FAKELENS_{name.upper()}")
        if route.max_files is not None:
            return BodyLimits(s.max_bytes * route.max_files + MULTIPART_OVERHEAD, route.max_files, s.body_timeout_s)
        return BodyLimits(s.max_request_bytes, s.max_batch_items, s.body_timeout_s)

    async def upload(self, scope, receive, send, route: Route) -> None:
        started = time.monotonic()
        try:
            # No in-flight slot while the body arrives: a slow client costs a socket and a
            # spooled file, never the capacity valid requests need.
            form, body = await read_form(scope, receive, route, self.limits(route), self.budget)
        except ClientGone:
            return
        except ServiceError as err:
            return await error_response(err)(scope, receive, send)
        try:
            if self.inflight >= self.settings.max_inflight:
                err = Overloaded(f"the server is busy ({self.inflight} requests being scored); "
                                 "retry after the Retry-After seconds")
                return await error_response(err)(scope, receive, send)
            self.inflight += 1
            try:
                inner_scope, inner_receive = canonical_request(scope, receive, form, route)
                await self.within_deadline(inner_scope, inner_receive, send, started)
            finally:
                self.inflight -= 1
        finally:
            await form.close()
            body.release()

    async def within_deadline(self, scope, receive, send, started: float) -> None:
        """The request's own 504 in our format (BentoML's traffic timeout is set a little later)."""
        responded = False

        async def tracking(message):
            nonlocal responded
            responded = True
            await send(message)

        remaining = self.settings.timeout_s - (time.monotonic() - started)
        try:
            async with asyncio.timeout(max(remaining, 0.001)):
                await self.app(scope, receive, tracking)
        except TimeoutError:
            if responded:
                raise
            err = GatewayTimeout(f"the request took longer than {self.settings.timeout_s} s; retry later, "
                                 "send fewer images per request (or raise FAKELENS_TIMEOUT_S)")
            await error_response(err)(scope, receive, send)

    async def openapi(self, scope, receive, send) -> None:
        """BentoML's document, with the statuses and error body the service really answers."""
        start: dict = {}
        chunks: list[bytes] = []

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        if start.get("status") == 200:
            body = json.dumps(document(json.loads(body), self.routes, auth=bool(self.keys),
                                       max_items=self.settings.max_batch_items)).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def one_error_format(self, send, path: str):
        """Error responses not built by us (404/405, BentoML's own 400/500/503) rewritten to our format."""
        held: dict | None = None
        chunks: list[bytes] = []

        async def wrapped(message):
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held = message  # error bodies are small: hold them to check their shape
                return
            if message["type"] != "http.response.body" or held is None:
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            status, body = held["status"], b"".join(chunks)
            if is_ours(body):
                headers = list(held.get("headers", []))
                if status in (429, 503) and not any(k.lower() == b"retry-after" for k, _ in headers):
                    headers.append((b"retry-after", str(Overloaded.retry_after_s).encode()))
                await send({**held, "headers": headers})
                return await send({"type": "http.response.body", "body": body})
            err = foreign_error(status, body, path, self.routes)
            response = error_response(err)
            ours = {k.lower() for k, _ in response.raw_headers}
            kept = [(k, v) for k, v in held.get("headers", [])  # e.g. 405's Allow
                    if k.lower() in KEPT_HEADERS and k.lower() not in ours]
            await send({"type": "http.response.start", "status": err.status, "headers": response.raw_headers + kept})
            await send({"type": "http.response.body", "body": response.body})

        return wrapped


def is_ours(body: bytes) -> bool:
    try:
        error = json.loads(body)["error"]
        return isinstance(error, dict) and {"code", "kind", "message"} <= set(error)
    except (ValueError, KeyError, TypeError):
        return False


URL = re.compile(r"https?://\S+")
KEPT_HEADERS = (b"allow", b"www-authenticate", b"retry-after")


def foreign_error(status: int, body: bytes, path: str, routes: dict[str, Route]) -> ServiceError:
    cls = ERRORS_BY_STATUS.get(status, InternalError if status >= 500 else BadRequest)
    fixed = {
        404: f"no endpoint at {path}; the API is POST {', POST '.join(sorted(routes))} (see /docs.json)",
        405: f"{path} does not take this method; the detection endpoints take POST with multipart/form-data",
        429: "too many requests; retry after the Retry-After seconds",
        503: "the model is overloaded; retry after the Retry-After seconds",
        504: "the request took too long; retry later or send fewer images per request",
    }
    if status in fixed:
        err = cls(fixed[status])
    elif status >= 500:
        err = cls("the server failed on this request; retry, and report it with the time if it persists")
    else:  # e.g. a framework validation error: keep its gist, not its links or library versions
        detail = URL.sub("", body.decode("utf-8", "replace")).strip().splitlines()
        err = cls(f"the request was refused: {(detail[0] if detail else '')[:300]}")
    err.error_code = HTTPStatus(status)  # keep the status even where no class of ours has it (e.g. 429)
    return err


class QuietDisconnect:
    """ASGI middleware of the model process: read each request's body before BentoML does.

    The front cancels a call to the model when its own request ends early (a 504, a retry); the
    model then met a closed connection half-way through the body, and BentoML logged a
    `ClientDisconnect` traceback and a 500 that nobody receives. A caller that went away is a
    debug line here, and the endpoint never runs for it."""

    log = logging.getLogger("fakelens.model")

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.log.debug("the caller of %s went away before its request arrived; nothing to answer",
                               scope["path"])
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
