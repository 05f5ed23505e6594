"""FAKELENS_DECODE=model on a real `fakelens serve`: JPEG bytes cross to the model process and are decoded
there (models/runtime/jpeg_decode.py); answers match the front-decoded path, other formats and bad files as before."""

from __future__ import annotations

import io
import re

import httpx
import numpy as np
import pytest
from PIL import Image

from models.core.preprocess import decode_image
from models.runtime.loader import load_detector
from tests.media_helpers import jpeg_bytes
from tests.serve_helpers import serving


@pytest.fixture(scope="module")
def http(tiny_checkpoint, tmp_path_factory):
    with serving(tiny_checkpoint, tmp_path_factory.mktemp("serve_decode"), {"FAKELENS_DECODE": "model"}) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client


def _png(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _decoded_in_model(client) -> float:
    text = client.get("/metrics").text
    found = re.findall(r"^fakelens_model_device_decoded_images_total(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    return sum(float(v) for v in found)


def test_jpegs_are_decoded_in_the_model_process_with_the_same_scores(http, tiny_checkpoint):
    jpegs = [jpeg_bytes((64, 48), seed=s) for s in range(3)]
    png = _png(7)
    broken = jpegs[0][:200] + b"\x00" * 64 + b"\xff\xd9"  # reads as a JPEG header, does not decode
    before = _decoded_in_model(http)
    files = [("images", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate([jpegs[0], broken, jpegs[1]])]
    files += [("images", ("p.png", png, "image/png")), ("images", ("j.jpg", jpegs[2], "image/jpeg"))]
    r = http.post("/detect_batch", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert _decoded_in_model(http) - before == 4  # the four JPEG-looking files went as bytes; the PNG did not

    local = load_detector(tiny_checkpoint, backend="eager", device="cpu")
    expected = local.probabilities([decode_image(b)[0] for b in (jpegs[0], jpegs[1], png, jpegs[2])])
    got = [results[i]["score"] for i in (0, 2, 3, 4)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert results[1]["error"]["kind"] == "truncated"  # its own error, the others unaffected
    assert results[0]["image"] == {"format": "JPEG", "width": 64, "height": 48, "frames": 1}

    one = http.post("/detect", files={"image": ("x.jpg", broken, "image/jpeg")})
    assert one.status_code == 422 and one.json()["error"]["kind"] == "truncated"
