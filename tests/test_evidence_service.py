"""The evidence endpoints end to end on one real `fakelens serve` (bentoml serve) on 127.0.0.1:
provenance in /detect and /detect_batch, face mode, /explain, /detect_video and their errors."""

from __future__ import annotations

import base64
import io
import os

import httpx
import numpy as np
import pytest
from PIL import Image

from models.evidence.video import Sampling, VideoLimits, sample_frames
from models.runtime.loader import load_detector
from tests.media_helpers import astronaut, c2pa_signed_jpeg, encode_video, jpeg_bytes, png_with_text, tampered
from tests.serve_helpers import serving

pytestmark = pytest.mark.slow

LIMITS = {"FAKELENS_MAX_VIDEO_BYTES": "300000", "FAKELENS_MAX_VIDEO_FRAMES": "8", "FAKELENS_MAX_BATCH_SIZE": "4"}


@pytest.fixture(scope="module")
def http(tiny_checkpoint, tmp_path_factory):
    with serving(tiny_checkpoint, tmp_path_factory.mktemp("serve_evidence"), LIMITS) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client


@pytest.fixture(scope="module")
def local(tiny_checkpoint):
    return load_detector(tiny_checkpoint, "eager", "cpu")


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def face_clip() -> bytes:
    """A 1 s clip of the astronaut photo drifting right by 2 px a frame (a face in every frame)."""
    import av

    photo = np.asarray(astronaut().resize((256, 256)))
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(np.roll(photo, 2 * i, axis=1).copy(), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def test_detect_declared_by_c2pa_manifest(http):
    signed = c2pa_signed_jpeg()
    r = http.post("/detect", files={"image": ("signed.jpg", signed)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == "synthetic" and body["reason"] == "declared"
    assert body["provenance"]["c2pa"]["status"] == "untrusted_signer"
    r = http.post("/detect", files={"image": ("tampered.jpg", tampered(signed))})
    body = r.json()
    assert body["reason"] == "model" and body["provenance"]["c2pa"]["status"] == "invalid"
    assert "INVALID" in body["provenance"]["warnings"][0]


def test_detect_batch_rows_carry_provenance(http):
    files = [("images", ("sd.png", png_with_text(parameters="Steps: 20, Sampler: Euler"))),
             ("images", ("plain.jpg", jpeg_bytes()))]
    results = http.post("/detect_batch", files=files).json()["results"]
    assert results[0]["reason"] == "declared" and results[0]["label"] == "synthetic"
    assert results[1]["reason"] == "model" and "note" in results[1]["provenance"]


def test_face_mode_scores_the_face_crop(http, local):
    photo = jpeg(astronaut())
    body = http.post("/detect", files={"image": ("a.jpg", photo)}, data={"faces": "true"}).json()
    faces = body["faces"]
    assert faces["face_found"] and len(faces["faces"]) == 1
    assert body["score"] == max(f["score"] for f in faces["faces"])
    x, y, w, h = faces["faces"][0]["box"]
    assert 160 < x < 200 and 40 < y < 90
    whole = http.post("/detect", files={"image": ("a.jpg", photo)}).json()
    assert "faces" not in whole and whole["score"] != body["score"]  # the crop, not the whole image, was scored
    nobody = http.post("/detect", files={"image": ("n.jpg", jpeg_bytes((96, 96)))}, data={"faces": "true"}).json()
    assert nobody["faces"]["face_found"] is False and "whole image" in nobody["faces"]["note"]


def test_batch_face_mode_answers_each_image_as_detect_does(http):
    photo, plain = jpeg(astronaut()), jpeg_bytes((96, 96))
    files = [("images", ("a.jpg", photo)), ("images", ("bad.jpg", b"not an image")), ("images", ("n.jpg", plain))]
    r = http.post("/detect_batch", files=files, data={"faces": "true"})
    assert r.status_code == 200, r.text
    face, bad, nobody = r.json()["results"]
    single = http.post("/detect", files={"image": ("a.jpg", photo)}, data={"faces": "true"}).json()
    assert face["faces"]["faces"] == single["faces"]["faces"] and face["score"] == pytest.approx(single["score"])
    assert bad["error"]["kind"] == "not_image"
    assert nobody["faces"]["face_found"] is False and "faces" not in http.post(
        "/detect_batch", files=files[:1]).json()["results"][0]  # plain batch mode stays plain


def test_explain_returns_grid_and_overlay(http):
    photo = jpeg_bytes((48, 40), seed=5)
    r = http.post("/explain", files={"image": ("x.jpg", photo)}, data={"grid": "4"})
    assert r.status_code == 200, r.text
    body = r.json()
    heat = body["heatmap"]
    assert (heat["rows"], heat["cols"], heat["cell_px"]) == (4, 4, 8) and heat["origin"] == [8, 4]
    assert all(isinstance(v, float) for row in heat["values"] for v in row)
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png_base64"])))
    assert overlay.format == "PNG" and overlay.size == (48, 40)
    detect = http.post("/detect", files={"image": ("x.jpg", photo)}).json()
    assert body["score"] == pytest.approx(detect["score"], abs=1e-5)  # the same model and views
    for grid in ("0", "17"):
        bad = http.post("/explain", files={"image": ("x.jpg", photo)}, data={"grid": grid})
        assert bad.status_code == 400 and "grid" in bad.json()["error"]["message"]


def test_detect_video_timeline_matches_local_scores(http, local):
    clip = encode_video(n=48, fps=24)
    r = http.post("/detect_video", files={"video": ("c.mp4", clip)}, data={"frames": "4"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["frames_scored"] == 4 and [t["time_s"] for t in body["timeline"]] == [0.25, 0.75, 1.25, 1.75]
    _, frames = sample_frames(clip, Sampling(frames=4), VideoLimits())
    expected = local.probabilities([f.image for f in frames])
    assert np.allclose([t["score"] for t in body["timeline"]], expected, atol=1e-5)
    assert body["mean"] == pytest.approx(float(np.mean(expected)), abs=1e-5) and body["aggregate"] == "mean"
    assert body["reason"] == "model" and "provenance" in body and body["video"]["codec"] == "h264"
    by_max = http.post("/detect_video", files={"video": ("c.mp4", clip)},
                       data={"frames": "4", "aggregate": "max"}).json()
    assert by_max["score"] == pytest.approx(float(np.max(expected)), abs=1e-5)


def test_detect_video_face_mode_per_frame(http):
    body = http.post("/detect_video", files={"video": ("f.mp4", face_clip())},
                     data={"frames": "3", "faces": "true"}).json()
    assert body["frames_scored"] == 3
    for row in body["timeline"]:
        assert row["face_found"] and len(row["faces"]) == 1 and row["score"] == row["faces"][0]["score"]


@pytest.mark.parametrize("name, payload, data, status, kind", [
    ("many.mp4", "clip", {"frames": "9"}, 413, "too_many_frames"),
    ("rate.mp4", "clip", {"per_second": "5"}, 413, "too_many_frames"),
    ("big.mp4", "big", {}, 413, "too_large"),
    ("still.jpg", "jpeg", {}, 415, "unsupported"),
    ("junk.mp4", "junk", {}, 415, "unsupported"),
    ("half.mp4", "half", {}, 415, "unsupported"),
    ("empty.mp4", "empty", {}, 400, "empty"),
    ("agg.mp4", "clip", {"aggregate": "median"}, 400, "bad_option"),  # refused by the form schema, in our shape
    ("zero.mp4", "clip", {"frames": "0"}, 400, "bad_option"),
    ("flag.mp4", "clip", {"faces": "0"}, 400, "bad_option"),  # a bool, strictly
])
def test_detect_video_refusals(http, name, payload, data, status, kind):
    clip = encode_video(n=24, fps=12)
    content = {"clip": clip, "big": os.urandom(400_000), "jpeg": jpeg_bytes(), "junk": b"junk" * 100,
               "half": clip[: len(clip) // 2], "empty": b""}[payload]
    r = http.post("/detect_video", files={"video": (name, content)}, data=data)
    assert r.status_code == status, r.text
    assert r.json()["error"]["kind"] == kind and r.json()["error"]["message"]
    if kind == "too_large":
        assert "FAKELENS_MAX_VIDEO_BYTES" in r.json()["error"]["message"]


def test_detect_video_needs_the_video_field(http):
    r = http.post("/detect_video", files={"image": ("c.mp4", encode_video(n=6))})
    assert r.status_code == 422 and "video" in r.json()["error"]["message"]
