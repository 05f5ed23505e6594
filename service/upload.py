"""Reading an upload before BentoML does: bounded in time, bytes and parts; spooled, not buffered.

    form = await read_form(scope, receive, route, limits, budget)   # raises ServiceError
    scope2, receive2 = canonical_request(scope, form, route)         # what BentoML then parses

`read_form` streams the request body straight into python-multipart (each file lands in
a SpooledTemporaryFile: 1 MiB in memory, then disk), so a request never holds its whole
body in memory. It enforces, in the service's own error format:
- a deadline for the whole body (`body_timeout_s`): a slow or stalled client gets 408
  instead of holding a socket and memory until the 60 s request timeout;
- the request's byte limit (413), before reading when Content-Length says so;
- the worker's budget of body bytes in flight (`ByteBudget`): beyond it, 503 + Retry-After;
- the number of parts (413 past the route's file limit, not python-multipart's 400 at 1,000).

`canonical_request` hands BentoML a fresh multipart body with the route's text fields (the
options) and one empty placeholder per file field; the parsed files travel beside it in the
request scope (`kept_upload`), so an upload is parsed once and never copied: without BentoML
parsing the body again, writing each file to a temp file and the endpoint reading it back,
the front's CPU per image fell from 1.79 to 1.60 ms (docs/performance.md). It also keeps the
client's file name from BentoML, which used it as a temp-file suffix (255+ bytes or a NUL
byte made a 500).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.errors import (
    BadRequest,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    Unprocessable,
    UnsupportedMediaType,
)
from service.routes import Route

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file bytes
MAX_TEXT_FIELDS = 16  # form fields that are not files; our endpoints take none today
UPLOADS = "fakelens.uploads"  # scope key: the guard's parsed files, {field: [UploadFile, ...]} in form order


class ClientGone(Exception):
    """The client disconnected before its body arrived: there is nobody to answer."""


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int  # whole request body
    max_files: int  # file parts in one request
    timeout_s: float  # the whole body must arrive within this
    setting: str = ""  # the FAKELENS_* variable that sets max_bytes, when not the image ones (413 message)


class ByteBudget:
    """Body bytes this worker holds for requests in progress (spooled to disk or not)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, n: int) -> None:
        if self.used + n > self.limit:
            raise Overloaded(
                f"the server is receiving {self.used:,} bytes of uploads already (limit {self.limit:,}); "
                "retry after the Retry-After seconds"
            )
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n


def media_type(scope) -> str:
    value = Headers(scope=scope).get("content-type", "")
    return value.split(";")[0].strip().lower()


def too_large(size: int, limit: int, setting: str = "") -> PayloadTooLarge:
    if setting:
        return PayloadTooLarge(f"the request body is {size:,}+ bytes, above the limit of {limit:,}; "
                               f"send a smaller file (or raise {setting})")
    return PayloadTooLarge(
        f"the request body is {size:,}+ bytes, above the limit of {limit:,}; send a smaller image or fewer "
        "images per request (or raise FAKELENS_MAX_BYTES / FAKELENS_MAX_REQUEST_BYTES)"
    )


class Body:
    """The request body as an async chunk stream, counted against its limits and the budget."""

    def __init__(self, receive, limits: BodyLimits, budget: ByteBudget, declared: int | None) -> None:
        self.receive, self.limits, self.budget = receive, limits, budget
        self.deadline = time.monotonic() + limits.timeout_s
        self.size = 0
        # Reserve what Content-Length announces up front, so a burst of big uploads is
        # refused before their bytes arrive; a chunked body is counted as it comes.
        self.reserved = declared or 0
        budget.take(self.reserved)

    def release(self) -> None:
        self.budget.give(self.reserved)
        self.reserved = 0

    async def next_message(self) -> dict:
        remaining = self.deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            return await asyncio.wait_for(self.receive(), remaining)
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {self.limits.timeout_s:g} s ({self.size:,} bytes "
                "received); send the whole body promptly (or raise FAKELENS_BODY_TIMEOUT_S)"
            ) from None

    async def chunks(self):
        while True:
            message = await self.next_message()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            self.size += len(chunk)
            if self.size > self.limits.max_bytes:
                raise too_large(self.size, self.limits.max_bytes, self.limits.setting)
            if self.size > self.reserved:
                self.budget.take(self.size - self.reserved)
                self.reserved = self.size
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return


def check_declared_length(scope, limits: BodyLimits) -> int | None:
    declared = Headers(scope=scope).get("content-length")
    if declared is None or not declared.isdigit():
        return None
    if int(declared) > limits.max_bytes:
        raise too_large(int(declared), limits.max_bytes, limits.setting)
    return int(declared)


async def parse_form(scope, body: Body, route: Route, limits: BodyLimits) -> FormData:
    # One part over the limit still parses, so check_form can say what was wrong with it
    # (two files on a one-file route is a 422); python-multipart stops anything past that.
    parser = MultiPartParser(Headers(scope=scope), body.chunks(), max_files=limits.max_files + 1,
                             max_fields=MAX_TEXT_FIELDS, max_part_size=64 * 1024)
    try:
        return await parser.parse()
    except MultiPartException as e:
        if e.message.startswith("Too many files"):
            # the parser stops at max_files + 1 (see above); the limit the client must meet is max_files
            raise PayloadTooLarge(f"more than {limits.max_files} files in one request; send at most "
                                  f"{limits.max_files} per {route.path} call") from None
        if e.message.startswith("Too many fields"):
            raise PayloadTooLarge(f"more than {MAX_TEXT_FIELDS} text fields in one request; "
                                  f"{route.path} takes the file field(s) {', '.join(route.files)}") from None
        raise BadRequest(f"the multipart body could not be parsed ({e.message}); let your HTTP client build it, "
                         f"e.g. curl {route.example()}") from None


def check_form(form: FormData, route: Route, max_files: int) -> None:
    for field, many in route.files.items():
        values = form.getlist(field)
        example = f"curl {route.example()}"
        if not values:
            raise Unprocessable(f"field '{field}' is missing; send the image(s) as file field '{field}': {example}",
                                kind="missing_field")
        if not all(isinstance(v, UploadFile) for v in values):
            raise Unprocessable(f"field '{field}' must be a file upload, not a text value: {example}",
                                kind="not_a_file")
        if not many and len(values) > 1:
            raise Unprocessable(f"{route.path} takes one file in '{field}' but got {len(values)}; "
                                "use /detect_batch with repeated 'images' fields", kind="too_many_files")
        if many and len(values) > max_files:
            raise PayloadTooLarge(f"more than {max_files} files in one request; send at most {max_files} per "
                                  f"{route.path} call")


def check_options(form: FormData, route: Route) -> None:
    """The route's text options, checked before BentoML sees them: a bad value is a 400 in our
    format that names the field, the value and what it takes (BentoML's own is a pydantic dump
    inside a sentence, and it logs a traceback for it)."""
    for name, option in route.options.items():
        for value in form.getlist(name):
            problem = option.problem(value) if isinstance(value, str) else f"form field '{name}' must be text"
            if problem:
                raise BadRequest(f"{problem}; e.g. curl -F {name}={json.dumps(option.default)} {route.example()}",
                                 kind="bad_option")


async def read_form(scope, receive, route: Route, limits: BodyLimits, budget: ByteBudget) -> tuple[FormData, Body]:
    """The parsed, checked form of one upload request; the caller closes the form and releases the Body."""
    if media_type(scope) != "multipart/form-data":
        field = next(iter(route.files))
        raise UnsupportedMediaType(
            f"Content-Type {media_type(scope) or '(none)'!r} is not accepted; send multipart/form-data with the "
            f"file in field '{field}', e.g. curl {route.example()}"
        )
    body = Body(receive, limits, budget, check_declared_length(scope, limits))
    try:
        form = await parse_form(scope, body, route, limits)
    except BaseException:
        body.release()
        raise
    try:
        check_form(form, route, limits.max_files)
        check_options(form, route)
    except BaseException:
        await form.close()
        body.release()
        raise
    return form, body


def _part_head(boundary: str, field: str, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()


def canonical_request(scope, receive, form: FormData, route: Route):
    """(scope, receive) presenting the route's text fields and one empty file per file field to
    BentoML; the route's files ride in scope[UPLOADS]."""
    boundary = uuid.uuid4().hex
    # BentoML's input model requires each file field; one empty placeholder per field (not per
    # file) satisfies it at the cost of one empty temp file per request
    parts = [_part_head(boundary, field, "placeholder") for field in route.files]
    parts += [_part_head(boundary, field) + value.encode()
              for field in route.fields for value in form.getlist(field) if isinstance(value, str)]
    body = b"".join(part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    sent = False

    async def replay():
        nonlocal sent
        if sent:  # the body is over: later calls wait for the client to go, as the real one does
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length",
                                                                   b"transfer-encoding")]
    headers += [(b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                (b"content-length", str(len(body)).encode())]
    kept = {field: form.getlist(field) for field in route.files}
    return {**scope, "headers": headers, UPLOADS: kept}, replay


def kept_count(scope, field: str) -> int:
    if UPLOADS not in scope:
        raise RuntimeError("no upload guard in front of this endpoint (service/guard.py parses the uploads)")
    return len(scope[UPLOADS].get(field, []))


def kept_upload(scope, field: str, index: int) -> bytes:
    """The bytes of the `index`-th file of `field` as the guard parsed it.

    Synchronous reads of a spooled file: call it in a worker thread, not on the event loop."""
    upload = scope[UPLOADS][field][index]
    upload.file.seek(0)
    return upload.file.read()
