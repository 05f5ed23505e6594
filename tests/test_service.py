"""The detection service end to end: one real `fakelens serve` (bentoml serve) on 127.0.0.1.

The server runs the tiny checkpoint with API keys on and small byte/pixel limits, so one
start covers auth, limits, bad inputs, unusual images, batching and score parity.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from models.core.preprocess import decode_image
from models.runtime.loader import load_detector
from tests.serve_helpers import serving

pytestmark = pytest.mark.slow

KEY = "test-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = {"FAKELENS_MAX_BYTES": "1000000", "FAKELENS_MAX_PIXELS": "2000000", "FAKELENS_MAX_BATCH_ITEMS": "20"}


@pytest.fixture(scope="session")
def server(tiny_checkpoint, tmp_path_factory):
    env = {**LIMITS, "FAKELENS_API_KEYS": f"{KEY},other-key"}
    with serving(tiny_checkpoint, tmp_path_factory.mktemp("serve"), env) as url:
        yield url


@pytest.fixture(scope="session")
def http(server):
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as client:
        yield client


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    return Image.fromarray(np.broadcast_to((x + y) / 2, (h, w, 3)).astype(np.uint8))


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    return encode(noise(48, 36, 3), "JPEG", exif=exif)


def multipage_tiff() -> bytes:
    buf = io.BytesIO()
    noise(40, 40, 4).save(buf, format="TIFF", save_all=True, append_images=[noise(40, 40, 5)])
    return buf.getvalue()


def animated(fmt: str) -> bytes:
    frames = [noise(40, 40, s) for s in (6, 7, 8)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)


def valid_images() -> dict[str, tuple[bytes, int]]:
    """name -> (file bytes, frames the service should report)."""
    arr16 = (np.arange(48 * 40, dtype=np.uint16).reshape(40, 48) * 30).astype(np.uint16)
    return {
        "cmyk.jpg": (encode(noise(50, 40, 1).convert("CMYK"), "JPEG"), 1),
        "gray16.png": (encode(Image.fromarray(arr16), "PNG"), 1),
        "gray.png": (encode(noise(40, 40, 2).convert("L"), "PNG"), 1),
        "palette.png": (encode(noise(40, 40, 2).convert("P"), "PNG"), 1),
        "alpha.png": (encode(noise(40, 40, 2).convert("RGBA"), "PNG"), 1),
        "rotated.jpg": (exif_rotated(), 1),
        "photo.webp": (encode(noise(40, 40, 9), "WEBP"), 1),
        "photo.bmp": (encode(noise(40, 40, 9), "BMP"), 1),
        "photo.tiff": (encode(noise(40, 40, 9), "TIFF"), 1),
        "png_named.jpg": (encode(noise(40, 40, 10), "PNG"), 1),
        "animated.gif": (animated("GIF"), 3),
        "animated.webp": (animated("WEBP"), 3),
        "pages.tiff": (multipage_tiff(), 2),
        "tiny.png": (encode(noise(5, 7, 11), "PNG"), 1),
        "large.jpg": (encode(gradient(1400, 1000), "JPEG", quality=80), 1),
    }


def truncated(fmt: str) -> bytes:
    data = encode(noise(64, 64, 12), fmt)
    return data[: len(data) // 2]


def archive() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.jpg", encode(noise(8, 8), "JPEG"))
    return buf.getvalue()


BAD_FILES = {
    "empty.jpg": (b"", 400, "empty"),
    "text.jpg": (b"just some text, not pixels\n" * 4, 415, "not_image"),
    "drawing.svg": (b"<svg xmlns='http://www.w3.org/2000/svg' width='9' height='9'></svg>", 415, "not_image"),
    "page.png": (b"<!DOCTYPE html><html><body>hi</body></html>", 415, "not_image"),
    "photos.jpg": (archive(), 415, "not_image"),
    "cut.jpg": (truncated("JPEG"), 422, "truncated"),
    "cut.png": (truncated("PNG"), 422, "truncated"),
    "bomb.png": (encode(Image.new("1", (2000, 1500)), "PNG"), 413, "too_many_pixels"),
}


def test_detect_returns_verdict(http):
    data = encode(noise(80, 60), "JPEG")
    r = http.post("/detect", files={"image": ("a.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] in ("real", "synthetic") and 0.0 <= body["score"] <= 1.0
    assert body["label"] == ("synthetic" if body["score"] >= body["threshold"] else "real")
    assert body["model"]["name"] == "fakelens-detector" and body["model"]["backend"] == "eager"
    assert body["image"] == {"format": "JPEG", "width": 80, "height": 60, "frames": 1}
    assert body["family"] is None and body["family_score"] is None  # the tiny model has no family head


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_file_gets_its_4xx(http, name):
    data, status, kind = BAD_FILES[name]
    r = http.post("/detect", files={"image": (name, data, "image/jpeg")})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and err["kind"] == kind and len(err["message"]) > 20


@pytest.mark.parametrize(
    "kwargs,status,kind",
    [
        (dict(files={"picture": ("a.jpg", b"x", "image/jpeg")}), 422, "missing_field"),
        (dict(data={"image": "http://example.com/a.jpg"}, files={"other": ("o", b"o")}), 422, "not_a_file"),
        (dict(json={"image": "aGVsbG8="}), 415, "unsupported_media_type"),
        (dict(content=b"\xff\xd8\xff", headers={"Content-Type": "image/jpeg"}), 415, "unsupported_media_type"),
        (dict(files={"image": ("big.jpg", os.urandom(1_100_000), "image/jpeg")}), 413, "too_large"),
        (dict(files=[("image", ("a.png", b"1")), ("image", ("b.png", b"2"))]), 422, "too_many_files"),
        (dict(content=b"--xx\r\nbroken", headers={"Content-Type": "multipart/form-data; boundary=xx"}),
         422, "missing_field"),
    ],
    ids=["missing-field", "text-value", "json-body", "raw-body", "oversize", "two-files", "broken-multipart"],
)
def test_bad_request_shapes(http, kwargs, status, kind):
    r = http.post("/detect", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["kind"] == kind


def test_server_survives_bad_inputs(http):
    for name, (data, _, _) in BAD_FILES.items():
        http.post("/detect", files={"image": (name, data)})
    assert http.get("/livez").status_code == 200
    r = http.post("/detect", files={"image": ("ok.png", encode(noise(20, 20), "PNG"))})
    assert r.status_code == 200


def test_unusual_images_scored_and_match_model(http, tiny_checkpoint):
    images = valid_images()
    detector = load_detector(tiny_checkpoint, "eager", "cpu")
    expected = detector.probabilities([decode_image(data)[0] for data, _ in images.values()])
    for (name, (data, frames)), want in zip(images.items(), expected, strict=True):
        r = http.post("/detect", files={"image": (name, data, "image/jpeg")})
        assert r.status_code == 200, (name, r.text)
        body = r.json()
        assert body["score"] == pytest.approx(want, abs=1e-5), name
        assert body["image"]["frames"] == frames, name
        assert ("note" in body["image"]) == (frames > 1), name


def test_batch_items_fail_alone_and_keep_order(http, tiny_checkpoint):
    good = [encode(noise(30 + i, 30, 20 + i), "PNG") for i in range(3)]
    parts = [good[0], BAD_FILES["text.jpg"][0], good[1], BAD_FILES["cut.jpg"][0], good[2]]
    r = http.post("/detect_batch", files=[("images", (f"f{i}.bin", d)) for i, d in enumerate(parts)])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res.get("error", {}).get("code") for res in results] == [None, 415, None, 422, None]
    want = load_detector(tiny_checkpoint, "eager", "cpu").probabilities([decode_image(d)[0] for d in good])
    got = [results[i]["score"] for i in (0, 2, 4)]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_batch_item_limit(http):
    r = http.post("/detect_batch", files=[("images", (f"{i}.png", b"x")) for i in range(21)])
    assert r.status_code == 413 and "at most 20" in r.json()["error"]["message"]


def test_bentoml_client_calls_both_endpoints(server, tmp_path, tiny_checkpoint):
    import bentoml

    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    noise(33, 44, 30).save(a)
    noise(50, 20, 31).save(b)
    want = load_detector(tiny_checkpoint, "eager", "cpu").probabilities([decode_image(p)[0] for p in (a, b)])
    with bentoml.SyncHTTPClient(server, token=KEY, timeout=60) as client:
        one = client.detect(image=a)
        both = client.detect_batch(images=[a, b])
    assert one["score"] == pytest.approx(want[0], abs=1e-5)
    np.testing.assert_allclose([res["score"] for res in both["results"]], want, atol=1e-5)


def test_api_keys(server):
    files = {"image": ("a.png", encode(noise(20, 20), "PNG"))}
    assert httpx.post(f"{server}/detect", files=files).status_code == 401
    wrong = httpx.post(f"{server}/detect", files=files, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert httpx.post(f"{server}/detect", files=files, headers={"X-API-Key": "other-key"}).status_code == 200
    assert httpx.get(f"{server}/docs.json").status_code == 401
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{server}{path}").status_code == 200, path


def batch_histogram(http) -> tuple[float, float]:
    """(model calls, model calls with one image) so far, from the service's own /metrics."""
    text = http.get("/metrics").text
    ones = sum(float(v) for v in re.findall(r'^fakelens_model_batch_size_bucket\{.*le="1\.0".*\} (\S+)$', text, re.M))
    total = sum(float(v) for v in re.findall(r"^fakelens_model_batch_size_count(?:\{.*\})? (\S+)$", text, re.M))
    return total, ones


def test_concurrent_requests_are_batched(http):
    data = [encode(noise(32, 32, s), "PNG") for s in range(16)]

    def call(d: bytes) -> int:
        return http.post("/detect", files={"image": ("x.png", d)}).status_code

    total0, ones0 = batch_histogram(http)
    batched = False
    for _ in range(4):  # BentoML's dispatcher forces its first ~11 calls to tiny batches
        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(call, data * 3)) == {200}
        total, ones = batch_histogram(http)
        if total - total0 > ones - ones0:
            batched = True
            break
    assert batched, "no model call ran more than one image under 16 concurrent clients"


def test_openapi_documents_what_the_service_answers(server):
    doc = httpx.get(f"{server}/docs.json", headers=AUTH).json()
    for path in ("/detect", "/detect_batch"):
        responses = doc["paths"][path]["post"]["responses"]
        assert {"200", "400", "401", "408", "413", "415", "422", "503", "504"} <= set(responses), path
        for code, response in responses.items():
            if code != "200":
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "InvalidArgument" not in doc["components"]["schemas"]
    assert doc["paths"]["/detect"]["post"]["security"]


def test_schemathesis_all_checks_pass(server):
    """Every check: no 5xx, statuses and bodies as documented, auth enforced, 405s with Allow.
    tests/schemathesis.toml lists the statuses the schema cannot express (see there why)."""
    cmd = [str(Path(sys.executable).parent / "st"), "--config-file", str(Path(__file__).parent / "schemathesis.toml"),
           "run", f"{server}/docs.json", "-c", "all", "--max-examples", "30", "--phases", "examples,coverage,fuzzing",
           "-w", "2", "--suppress-health-check", "all", "-H", f"Authorization: Bearer {KEY}",
           "--request-timeout", "30"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-4000:]
    assert re.search(r"\d+ generated, \d+ passed", result.stdout), result.stdout[-2000:]


def test_http_scores_equal_fakelens_evaluate(server, tiny_checkpoint, tmp_path):
    """No train/serve skew: `fakelens evaluate`'s scores.csv and the HTTP answers for the same files agree."""
    import csv

    from models.commands import main
    from tests.conftest import write_images

    paths = write_images(tmp_path / "real", 3, size=(50, 40), seed=40) + write_images(
        tmp_path / "fake", 3, size=(70, 30), seed=41, fmt="JPEG")
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows([[str(p), int("fake" in str(p)), "test"] for p in paths])
    report = tmp_path / "report"
    assert main(["evaluate", str(tiny_checkpoint), "--data", str(tmp_path / "manifest.csv"), "--split", "test",
                 "--out", str(report), "--no-robustness", "--no-plots", "--device", "cpu"]) == 0
    with open(report / "scores.csv", newline="") as f:
        evaluated = {Path(r["path"]).name: float(r["score"]) for r in csv.DictReader(f)}
    assert len(evaluated) == len(paths)
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as client:
        served = {p.name: client.post("/detect", files={"image": (p.name, p.read_bytes())}).json()["score"]
                  for p in paths}
        batch = client.post("/detect_batch", files=[("images", (p.name, p.read_bytes())) for p in paths]).json()
    for name, score in evaluated.items():
        assert served[name] == pytest.approx(score, abs=1e-5), name
    np.testing.assert_allclose([r["score"] for r in batch["results"]], [evaluated[p.name] for p in paths], atol=1e-5)


def test_metrics_export_the_score_histogram_and_verdicts(http):
    """/detect and /detect_batch answers land in the drift histogram and verdict counters
    (service/monitoring.py), per model version, readable by `fakelens drift` (models/core/drift.py)."""
    from models.core.drift import LABELS, N_BINS, DriftInputError, bucket_counts, parse_metrics

    def counted() -> tuple[np.ndarray, dict]:
        try:
            stream = parse_metrics(http.get("/metrics").text, "/metrics")
        except DriftInputError:  # nothing answered yet in this server's life
            return np.zeros(N_BINS), dict.fromkeys(LABELS, 0.0)
        return stream.counts, stream.verdicts

    counts0, verdicts0 = counted()
    one = http.post("/detect", files={"image": ("a.png", encode(noise(32, 32, 40), "PNG"))}).json()
    batch = http.post("/detect_batch", files=[("images", ("b.png", encode(noise(36, 30, 41), "PNG"))),
                                              ("images", ("c.jpg", encode(noise(30, 40, 42), "JPEG"))),
                                              ("images", ("bad.jpg", b"not an image at all"))]).json()
    answers = [one, *(r for r in batch["results"] if "error" not in r)]
    assert len(answers) == 3
    counts, verdicts = counted()
    np.testing.assert_array_equal(counts - counts0, bucket_counts([a["score"] for a in answers]))
    for v in LABELS:
        assert verdicts[v] - verdicts0[v] == sum(a["label"] == v for a in answers), v
    text = http.get("/metrics").text
    series = f'model_name="{one["model"]["name"]}",model_version="{one["model"]["version"]}"'
    assert re.search(rf'^fakelens_score_bucket\{{le="0\.001",{series}\}} ', text, re.M), text[-2000:]
    assert re.search(rf'^fakelens_verdicts_total\{{{series},verdict="{one["label"]}"\}} ', text, re.M)
