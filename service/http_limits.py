"""Limits on the request head that the ASGI app never sees: a deadline for the headers, and a 431
in the service's JSON format for a header block over h11's 16 KiB.

BentoML builds uvicorn's Config itself (no `http=` or header-timeout option reaches it), and uvicorn
answers both cases below the app: an oversized header block with a plain-text `400 Invalid HTTP
request received.`, and a client that sends its headers a byte at a time is never timed out (the
keep-alive timer is cancelled by every byte; FAKELENS_BODY_TIMEOUT_S starts only once the headers
are in). `install(settings)` makes uvicorn's `http="auto"` choice this subclass of its h11
protocol (h11 is what "auto" picks without httptools, as installed here); call it at import, before
the worker's uvicorn Config loads.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http import auto
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0  # replaced by install(settings)
LINGER_S = 2.0  # after an error answer, read and drop what the client still sends, for this long


def error_body(status: int, kind: str, message: str) -> bytes:
    return json.dumps({"error": {"code": status, "kind": kind, "message": message}}).encode()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and JSON answers for a bad request head."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.refused_status = 400
        self.draining = False
        self.head_deadline = None
        real_next_event = self.conn.next_event

        def next_event():
            try:
                event = real_next_event()
            except h11.RemoteProtocolError as e:
                self.refused_status = e.error_status_hint  # 431 for a header block over the limit
                raise
            if isinstance(event, h11.Request):
                self.stop_head_deadline()
            return event

        self.conn.next_event = next_event
        self.start_head_deadline()

    def start_head_deadline(self) -> None:
        self.stop_head_deadline()
        self.head_deadline = self.loop.call_later(HEADER_TIMEOUT_S, self.head_timed_out)

    def stop_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def head_timed_out(self) -> None:
        self.head_deadline = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered: the body deadline and the request timeout own it
        if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
            self.transport.close()  # an idle keep-alive connection: nothing was asked, nothing to answer
            return
        message = (f"the request headers did not arrive within {HEADER_TIMEOUT_S:g} s; send them promptly "
                   "(or raise FAKELENS_HEADER_TIMEOUT_S)")
        self.send_error(408, "header_timeout", message)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.start_head_deadline()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc) -> None:
        self.stop_head_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        if self.refused_status == 431:
            self.send_error(431, "headers_too_large", "the request headers are over 16 KiB; send fewer or "
                            "shorter headers (cookies, tokens)")
        else:
            self.send_error(400, "bad_request", "the request is not valid HTTP/1.1; let your HTTP client "
                            "build it")

    def send_error(self, status: int, kind: str, message: str) -> None:
        """Answer in the service's format below the app, then close (what came before is not parsed).

        A lingering close: closing with the client's unread bytes in our buffer sends a reset, and the
        reset makes the client's kernel drop our answer before the client reads it (a 1 MB header
        block is still arriving when h11 refuses it at 16 KiB)."""
        body = error_body(status, kind, message)
        head = (f"HTTP/1.1 {status} {h11_reason(status)}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
        self.transport.write(head + body)
        self.draining = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self.draining:
            return  # what follows a refused head is dropped
        super().data_received(data)


def h11_reason(status: int) -> str:
    from http import HTTPStatus

    return HTTPStatus(status).phrase


def install(header_timeout_s: float) -> None:
    """Make uvicorn's http="auto" this protocol (read when the worker's Config loads)."""
    global HEADER_TIMEOUT_S
    HEADER_TIMEOUT_S = float(header_timeout_s)
    auto.AutoHTTPProtocol = GuardedH11Protocol
