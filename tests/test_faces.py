"""Face mode: yuface (libfacedetection) on a real photo, native-resolution crops, max over faces."""

from __future__ import annotations

import threading
import time

import numpy as np
from PIL import Image

from models.evidence.faces import Face, FacePlan, crop_face, find_faces, plan_faces, summarize
from tests.conftest import tiny_config
from tests.media_helpers import astronaut


def test_finds_the_astronauts_face_in_native_pixels():
    img = astronaut()
    faces = find_faces(img)
    assert len(faces) == 1
    x, y, w, h = faces[0].box
    # Her face spans about x 178-270, y 60-180 of the 512 x 512 photo.
    assert 160 < x < 200 and 40 < y < 90 and 70 < w < 130 and 90 < h < 150
    assert faces[0].confidence > 0.8
    # A 4x upscale is detected on a downscaled copy, and the box comes back in its own pixels.
    big = find_faces(img.resize((2048, 2048)))
    assert len(big) == 1 and all(abs(a - 4 * b) < 40 for a, b in zip(big[0].box, faces[0].box, strict=True))


def test_detection_is_never_entered_by_two_threads_at_once(monkeypatch):
    """yuface's first call deadlocks when a second thread enters it (a C++ static guard held across a
    Python import), so the scorer's decode threads must take turns inside it."""
    import yuface

    real, inside, most = yuface.detect, [0], [0]
    count = threading.Lock()

    def counting_detect(img, conf=0.5):
        with count:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.02)  # long enough for every other thread to arrive
        try:
            return real(img, conf=conf)
        finally:
            with count:
                inside[0] -= 1

    monkeypatch.setattr(yuface, "detect", counting_detect)
    img, start = astronaut().resize((128, 128)), threading.Barrier(6)
    found: list[int] = []

    def detect_once():
        start.wait()
        found.append(len(find_faces(img)))

    threads = [threading.Thread(target=detect_once) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(found) == 6 and most[0] == 1


def test_crop_keeps_native_resolution_with_margin():
    img = astronaut()
    face = Face(box=(200, 100, 80, 100), confidence=1.0)
    crop = crop_face(img, face, margin=0.25)
    assert crop.size == (150, 150)  # max(w, h) * 1.5, pixels copied, not resized
    assert np.array_equal(np.asarray(crop)[0, 0], np.asarray(img)[100 + 50 - 75, 240 - 75])
    edge = crop_face(img, Face(box=(0, 0, 40, 40), confidence=1.0), margin=0.5)
    assert edge.size == (60, 60)  # clipped at the image border


def test_plan_scores_each_face_or_falls_back_to_the_whole_image():
    cfg = tiny_config(img_size=32)
    plan = plan_faces(astronaut(), cfg.preprocess)
    assert len(plan.faces) == 1 and plan.views[0].shape == (1, 3, 32, 32)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    empty = plan_faces(noise, cfg.preprocess)
    assert empty.faces == [] and len(empty.views) == 1
    answer = summarize(empty, [0.3], cfg)
    assert answer["face_found"] is False and "whole image" in answer["note"] and answer["score"] == 0.3


def test_verdict_is_the_max_over_faces():
    cfg = tiny_config()
    faces = [Face((0, 0, 10, 10), 0.9), Face((20, 0, 10, 10), 0.8), Face((40, 0, 10, 10), 0.7)]
    plan = FacePlan(faces=faces, views=[np.zeros((1, 3, 32, 32), np.float32)] * 3)
    answer = summarize(plan, [0.2, 0.9, 0.4], cfg)
    assert answer["score"] == 0.9 and answer["max_face"] == 1
    assert [f["label"] for f in answer["faces"]] == ["real", "synthetic", "real"]
    assert answer["faces"][1]["box"] == [20, 0, 10, 10]
