"""Hostile media and malformed requests on every route of a real `fakelens serve` (issue 19, part 5).

Every format the service accepts, truncated at several lengths, on /detect, /detect_batch (one bad
item among good ones: only that item fails), face mode and /explain; form options out of range;
request heads that are too large or too slow. Each answer is a 4xx in the service's format and
the server logs no traceback.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from models.core.preprocess import ALLOWED_FORMATS
from tests.serve_helpers import serving
from tests.test_hostile_media import TRUNCATED, encoded, png_header

pytestmark = pytest.mark.slow

HEADER_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("serve_hostile")
    with serving(tiny_checkpoint, workdir, {"FAKELENS_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S)}) as url:
        yield url, workdir / "serve.log"


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served[0], timeout=60) as client:
        yield client


def is_refusal(r: httpx.Response, statuses=(415, 422)) -> bool:
    error = r.json().get("error", {})
    return r.status_code in statuses and error.get("code") == r.status_code and error.get("message")


@pytest.mark.parametrize("fmt,n", TRUNCATED)
def test_truncated_files_are_refused_on_every_route(http, fmt, n):
    data = encoded(fmt)[:n]
    name = f"cut.{fmt.lower()}"
    for path, form in (("/detect", {}), ("/detect", {"faces": "true"}), ("/explain", {"grid": "2"})):
        r = http.post(path, files={"image": (name, data)}, data=form)
        assert is_refusal(r), (path, form, r.status_code, r.text)


@pytest.mark.parametrize("fmt", ALLOWED_FORMATS)
@pytest.mark.parametrize("faces", ["false", "true"])
def test_one_truncated_item_fails_alone_in_a_batch(http, fmt, faces):
    bad = encoded(fmt)[:3000]
    files = [("images", ("a.png", encoded("PNG", seed=1))), ("images", (f"cut.{fmt.lower()}", bad)),
             ("images", ("b.jpg", encoded("JPEG", seed=2)))]
    r = http.post("/detect_batch", files=files, data={"faces": faces})
    assert r.status_code == 200, r.text
    first, middle, last = r.json()["results"]
    assert "score" in first and "score" in last
    assert middle["error"]["code"] in (415, 422) and middle["error"]["kind"] in ("truncated", "not_image")


def test_a_bomb_quotes_the_configured_limit(http):
    r = http.post("/detect", files={"image": ("bomb.png", png_header(20_000, 10_000))})
    assert r.status_code == 413, r.text
    message = r.json()["error"]["message"]
    assert "40,000,000" in message and "FAKELENS_MAX_PIXELS" in message and "DOS" not in message


@pytest.mark.parametrize("path,field,value,takes", [
    ("/detect_video", "frames", "0", "an integer >= 1"),
    ("/explain", "grid", "100", "an integer from 1 to 16"),
    ("/detect_video", "aggregate", "median", "one of 'mean', 'max'"),
    ("/detect", "faces", "0", "true or false"),
])
def test_bad_form_options_are_400_with_field_value_and_range(served, http, path, field, value, takes):
    upload = "video" if path == "/detect_video" else "image"
    r = http.post(path, files={upload: ("x.bin", encoded("PNG"))}, data={field: value})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(r.json()) == {"error"} and error["kind"] == "bad_option"
    assert f"'{field}'" in error["message"] and repr(value) in error["message"] and takes in error["message"]
    assert "pydantic" not in error["message"] and "validation error" not in error["message"]


def test_a_video_route_without_its_field_suggests_a_video(http):
    r = http.post("/detect_video", files={"image": ("a.png", encoded("PNG"))})
    assert r.status_code == 422 and r.json()["error"]["kind"] == "missing_field"
    message = r.json()["error"]["message"]
    assert "video=@clip.mp4" in message and "photo.jpg" not in message


def test_the_part_limit_message_states_the_real_limit(http):
    r = http.post("/detect_batch", files=[("images", (f"{i}.png", b"x")) for i in range(1000)])
    assert r.status_code == 413, r.text
    message = r.json()["error"]["message"]
    assert "more than 32 files" in message and "at most 32" in message and "33" not in message


def raw_exchange(url: str, head: bytes, pause_s: float = 0.0, step: int = 0) -> tuple[int, bytes]:
    """Send a request head (all at once, or `step` bytes every `pause_s`); the status and body answered."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        try:
            if step:
                for i in range(0, len(head), step):
                    s.sendall(head[i : i + step])
                    time.sleep(pause_s)
            else:
                s.sendall(head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole head was sent
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_an_oversized_header_block_is_431_in_our_format(served):
    head = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1024 * 1024) + b"\r\n\r\n"
    status, body = raw_exchange(served[0], head)
    assert status == 431 and json.loads(body)["error"]["kind"] == "headers_too_large"


def test_headers_that_do_not_arrive_get_408_and_the_socket_is_closed(served, http):
    head = b"POST /detect HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    # one byte a second: the whole head would take minutes; the deadline is HEADER_TIMEOUT_S
    status, body = raw_exchange(served[0], head, pause_s=1.0, step=1)
    assert status == 408 and json.loads(body)["error"]["kind"] == "header_timeout"
    assert http.get("/livez").status_code == 200  # keep-alive clients are unaffected


def test_the_server_logged_no_traceback(served, http):
    """Runs last in this module: everything above was answered without a logged traceback."""
    assert http.get("/livez").status_code == 200
    log = served[1].read_text(errors="replace")
    assert "Traceback" not in log and "ValidationError" not in log, log[-4000:]


def run_asgi(app, messages: list[dict]) -> None:
    import asyncio

    queue = list(messages)

    async def receive():
        return queue.pop(0)

    async def send(message):
        pass

    # A thread of its own: the browser tests' Playwright keeps an event loop running in this one.
    from concurrent.futures import ThreadPoolExecutor

    scope = {"type": "http", "path": "/score", "method": "POST", "headers": []}
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, app(scope, receive, send)).result()


def test_a_caller_that_went_away_is_a_debug_line_not_a_traceback(caplog):
    """The model process's ClientDisconnect (the front cancelled its call half-way through the body)."""
    import logging

    from starlette.requests import ClientDisconnect, Request

    from service.guard import QuietDisconnect

    bodies = []

    async def endpoint(scope, receive, send):  # reads its body as BentoML's endpoints do
        bodies.append(await Request(scope, receive).body())

    cut_off = [{"type": "http.request", "body": b"abc", "more_body": True}, {"type": "http.disconnect"}]
    with pytest.raises(ClientDisconnect):
        run_asgi(endpoint, cut_off)  # what BentoML logged as a traceback and a 500
    with caplog.at_level(logging.DEBUG, logger="fakelens.model"):
        run_asgi(QuietDisconnect(endpoint), cut_off)
    assert bodies == [] and [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert "went away" in caplog.records[0].getMessage()

    run_asgi(QuietDisconnect(endpoint), [{"type": "http.request", "body": b"ab", "more_body": True},
                                         {"type": "http.request", "body": b"c", "more_body": False}])
    assert bodies == [b"abc"]  # a whole request reaches the endpoint unchanged


def test_a_link_dropped_while_the_answer_is_read_is_retried_not_a_500():
    """aiohttp raises a bare RuntimeError("Connection closed.") when the model's answer is cut off
    mid-read (seen once in a 15-minute soak); the front retries the idempotent call."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from service.service import Detector

    calls = []

    async def flaky(payload):
        calls.append(payload)
        if len(calls) == 1:
            raise RuntimeError("Connection closed.")
        return [0.25]

    async def broken(payload):
        raise RuntimeError("something else")

    front = Detector.inner
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, front.call_model(None, flaky, ["x"])).result() == [0.25]
        assert len(calls) == 2
        with pytest.raises(RuntimeError, match="something else"):  # other errors are not swallowed
            pool.submit(asyncio.run, front.call_model(None, broken, ["x"])).result()
