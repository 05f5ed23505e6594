"""What a hostile or careless client can do to a real `fakelens serve`, and the calibrated verdict over HTTP.

One server with small limits (2 requests in flight, 2 s to send a body, a 3 MB upload
budget) and API keys on, running a model whose detector.json carries a calibrated threshold
other than 0.5 and an uncertain band. Each test is the regression test of one defect found
when the service was attacked (issue 13).
"""

from __future__ import annotations

import dataclasses
import io
import re
import shutil
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from models.core.config import DetectorConfig
from models.core.preprocess import decode_image
from models.core.verdict import label_for
from models.runtime.loader import load_detector
from tests.serve_helpers import serving

pytestmark = pytest.mark.slow

KEY = "hardening-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY_TIMEOUT_S = 2
MB = 1024 * 1024
SETTINGS = {
    "FAKELENS_API_KEYS": KEY,
    "FAKELENS_MAX_INFLIGHT": "2",
    "FAKELENS_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    "FAKELENS_MAX_BYTES": str(1 * MB),
    "FAKELENS_MAX_REQUEST_BYTES": str(2 * MB),
    "FAKELENS_MAX_INFLIGHT_BYTES": str(3 * MB),
    "FAKELENS_MAX_BATCH_ITEMS": "8",
}


def png(seed: int, size=(40, 40)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def images_and_scores(model) -> tuple[list[bytes], np.ndarray]:
    """Three images whose scores under `model` are far enough apart to place a threshold and band between."""
    detector = load_detector(model, "eager", "cpu")
    candidates = [png(seed) for seed in range(24)]
    scores = detector.probabilities([decode_image(c)[0] for c in candidates])
    order = np.argsort(scores)
    picks = [order[0], order[len(order) // 2], order[-1]]
    return [candidates[i] for i in picks], scores[picks]


@pytest.fixture(scope="module")
def calibrated(tiny_checkpoint, tmp_path_factory):
    """The tiny model with a sharper temperature, a threshold and an uncertain band fitted to 3 images."""
    model = tmp_path_factory.mktemp("calibrated") / "model"
    shutil.copytree(tiny_checkpoint, model)
    cfg = DetectorConfig.load(model / "detector.json")
    dataclasses.replace(cfg, temperature=0.02).save(model / "detector.json")
    images, scores = images_and_scores(model)
    low, mid, high = scores
    band = ((low + mid) / 2, (mid + high) / 2)
    cfg = dataclasses.replace(DetectorConfig.load(model / "detector.json"), threshold=float(mid),
                              uncertain_band=(float(band[0]), float(band[1])))
    cfg.save(model / "detector.json")
    return model, cfg, images, scores


@pytest.fixture(scope="module")
def server(calibrated, tmp_path_factory):
    model = calibrated[0]
    with serving(model, tmp_path_factory.mktemp("serve_hardening"), SETTINGS) as url:
        yield url


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as client:
        yield client


def test_calibrated_threshold_and_band_reach_the_http_answer(http, calibrated):
    _, cfg, images, scores = calibrated
    assert abs(cfg.threshold - 0.5) > 1e-3 and cfg.uncertain_band[0] < cfg.threshold < cfg.uncertain_band[1]
    answers = [http.post("/detect", files={"image": (f"{i}.png", data)}).json() for i, data in enumerate(images)]
    assert [a["label"] for a in answers] == ["real", "uncertain", "synthetic"]
    assert [a["label"] for a in answers] == [label_for(s, cfg) for s in scores]
    for a, s in zip(answers, scores, strict=True):
        assert a["score"] == pytest.approx(s, abs=1e-6)
        assert a["threshold"] == pytest.approx(cfg.threshold) and a["uncertain_band"] == pytest.approx(
            list(cfg.uncertain_band))
    batch = http.post("/detect_batch", files=[("images", (f"{i}.png", d)) for i, d in enumerate(images)]).json()
    assert [r["label"] for r in batch["results"]] == ["real", "uncertain", "synthetic"]


def endpoint_labels(text: str) -> set[str]:
    return set(re.findall(r'endpoint="([^"]*)"', text))


def test_unknown_paths_create_no_metric_series(server, http):
    for i in range(150):  # with and without a key: 401s and 404s alike
        headers = AUTH if i % 2 else {}
        httpx.get(f"{server}/{uuid.uuid4().hex}/{i}", headers=headers, timeout=10)
    labels = endpoint_labels(http.get("/metrics").text)
    assert labels <= {"/detect", "/detect_batch", "/readyz", "/livez", "/healthz", "/docs.json", "/",
                      "/other", "/describe", "/score", "/score_jpeg",  # the model process's own methods
                      "/explain", "/detect_video", "/view_logits", "/view_outputs"}, labels  # the evidence routes (docs/evidence.md)
    assert "/other" in labels


def test_unknown_path_and_method_answer_in_our_format(http):
    r = http.get("/no/such/endpoint")
    assert r.status_code == 404 and r.json()["error"]["kind"] == "not_found"
    r = http.get("/detect")
    assert r.status_code == 405 and r.json()["error"]["kind"] == "method_not_allowed" and "POST" in r.headers["allow"]


def slow_socket(server: str, declared: int, path: str = "/detect") -> socket.socket:
    """Headers and a few body bytes, then silence: a slowloris client."""
    host, port = server.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall((f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
               f"Content-Type: multipart/form-data; boundary=xx\r\nContent-Length: {declared}\r\n\r\n").encode()
              + b"--xx\r\n")
    return s


def read_response(s: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_slow_bodies_hold_no_slot_and_get_408(server, http):
    slow = [slow_socket(server, 100_000) for _ in range(6)]  # 3x the in-flight limit
    try:
        time.sleep(0.3)
        r = http.post("/detect", files={"image": ("ok.png", png(99))})
        assert r.status_code == 200, r.text  # the slow clients hold no admission slot
        assert http.get("/readyz").status_code == 200
        for s in slow:
            status, body = read_response(s)
            assert status == 408 and b'"kind":"body_timeout"' in body
    finally:
        for s in slow:
            s.close()


def test_trickled_body_meets_the_whole_body_deadline(server):
    """A byte every 0.3 s never idles long, but the body as a whole must arrive in BODY_TIMEOUT_S."""
    s = slow_socket(server, 10_000)
    start = time.monotonic()
    try:
        s.settimeout(0.3)
        status = None
        while time.monotonic() - start < BODY_TIMEOUT_S + 10:
            try:
                s.sendall(b"x")
                data = s.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            status = int(data.split(b" ", 2)[1])
            break
        assert status == 408
    finally:
        s.close()


def test_upload_bytes_are_budgeted(server, http):
    """Bodies announced beyond the worker's upload budget are refused before their bytes arrive."""
    first = slow_socket(server, int(1.9 * MB), "/detect_batch")  # holds 1.9 MB of the 3 MB budget until its 408
    try:
        time.sleep(0.3)
        second = slow_socket(server, int(1.9 * MB), "/detect_batch")
        try:
            status, body = read_response(second)
            assert status == 503 and b'"kind":"overloaded"' in body
        finally:
            second.close()
        assert http.post("/detect", files={"image": ("small.png", png(98))}).status_code == 200
        assert read_response(first)[0] == 408
    finally:
        first.close()
    with ThreadPoolExecutor(2) as pool:  # after the 408 the budget is whole again
        codes = list(pool.map(lambda i: http.post("/detect", files={"image": (f"{i}.png", png(i))}).status_code,
                              range(2)))
    assert codes == [200, 200]


@pytest.mark.parametrize("name", ["Ж" * 200 + ".png", "x" * 300 + ".png", "../../etc/passwd", "a\nb.png"])
def test_odd_filenames_are_scored(http, name):
    r = http.post("/detect", files={"image": (name, png(5))})
    assert r.status_code == 200, r.text
    batch = http.post("/detect_batch", files=[("images", (name, png(5))), ("images", ("ok.png", png(6)))])
    assert batch.status_code == 200 and all("score" in res for res in batch.json()["results"]), batch.text


def test_nul_in_filename_is_scored(http):
    data = png(7)
    body = (b'--xx\r\nContent-Disposition: form-data; name="image"; filename="a\x00b.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--xx--\r\n")
    r = http.post("/detect", content=body, headers={"Content-Type": "multipart/form-data; boundary=xx"})
    assert r.status_code == 200, r.text


def test_too_many_parts_is_413_in_our_format(http):
    r = http.post("/detect_batch", files=[("images", (f"{i}.png", b"x")) for i in range(1100)])
    assert r.status_code == 413, r.text
    assert r.json()["error"]["kind"] == "too_large" and "at most 8" in r.json()["error"]["message"]
    many_fields = http.post("/detect", data={f"f{i}": "v" for i in range(40)}, files={"image": ("a.png", png(1))})
    assert many_fields.status_code == 413 and many_fields.json()["error"]["code"] == 413
