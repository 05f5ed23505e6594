"""Face mode: find faces, score each face crop at native resolution, verdict = max over faces.

    plan = plan_faces(rgb, cfg.preprocess)          # faces + one views array per face
    probs = detector.probabilities_from_views(plan.views)
    answer = summarize(plan, probs, cfg)            # score = max over faces, boxes and per-face scores

Faces are found by libfacedetection through the `yuface` wheel (BSD, weights compiled into
its 475 KB shared library, no network, no torch pins). Face swaps and face-only edits leave
the rest of the frame real, so a whole-image score dilutes them; scoring each face crop
(with margin, never resized: resizing smooths away generator traces) and taking the max
keeps one manipulated face from hiding among real pixels. With no face found, the whole
image is scored and the answer says so.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models.core.config import DetectorConfig, PreprocessConfig
from models.core.preprocess import eval_views
from models.core.verdict import label_for

# libfacedetection was trained on ~320-640 px inputs; yuface warns above 960 px.
DETECT_MAX_SIDE = 640
MIN_CONFIDENCE = 0.6
MAX_FACES = 16
MARGIN = 0.3  # of the box size, added on each side: hairline, ears and jaw edges carry blending traces

# yuface's pybind11 binding initialises a C++ function-local static on its first call, and that
# initialiser imports a Python module: a second thread entering meanwhile holds the GIL while it
# waits on the static's guard, the first waits for the GIL, and both hang for good (seen in CI,
# and in about 1 of 5 fresh processes with 8 threads). Taking a Python lock first waits with the
# GIL released. One detection is a few ms on a <=640 px image, so serialising costs little.
_DETECT_LOCK = threading.Lock()


def _import_yuface() -> None:
    """Import yuface with passive OpenMP waiting unless the user chose otherwise.

    yuface bundles its own libgomp, which reads OMP_WAIT_POLICY once, when it loads. Its
    default (spinning) made one 512 px detection 526 ms instead of 36 ms on our busy 2-core
    machine (docs/evidence.md); `fakelens` sets the same default for torch in models/commands.py,
    but the library is also used without that entry point (bentoml serve, tests, benches).
    """
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x, y, width, height in the original image's pixels
    confidence: float  # 0..1, the face detector's


@dataclass(frozen=True)
class FacePlan:
    faces: list[Face]
    views: list[np.ndarray]  # one V x 3 x S x S array per face, or one for the whole image when no face


def find_faces(img: Image.Image, min_confidence: float = MIN_CONFIDENCE, max_faces: int = MAX_FACES) -> list[Face]:
    """Faces in an RGB image, most confident first, boxes in native pixels."""
    _import_yuface()
    import yuface

    scale = min(1.0, DETECT_MAX_SIDE / max(img.size))
    small = img if scale == 1.0 else img.resize(
        (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR)
    bgr = np.ascontiguousarray(np.asarray(small.convert("RGB"), dtype=np.uint8)[..., ::-1])
    with _DETECT_LOCK:
        confs, boxes, _ = yuface.detect(bgr, conf=min_confidence)
    faces = []
    for conf, (x, y, w, h) in sorted(zip(confs.tolist(), boxes.tolist(), strict=True), key=lambda t: -t[0]):
        x0, y0 = max(0, round(x / scale)), max(0, round(y / scale))
        x1, y1 = min(img.width, round((x + w) / scale)), min(img.height, round((y + h) / scale))
        if x1 - x0 >= 8 and y1 - y0 >= 8:
            faces.append(Face(box=(x0, y0, x1 - x0, y1 - y0), confidence=round(conf / 100.0, 3)))
    return faces[:max_faces]


def crop_face(img: Image.Image, face: Face, margin: float = MARGIN) -> Image.Image:
    """A square crop around the face with `margin` on each side, clipped to the image, not resized."""
    x, y, w, h = face.box
    side = round(max(w, h) * (1 + 2 * margin))
    cx, cy = x + w / 2, y + h / 2
    box = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
    return img.crop((max(0, box[0]), max(0, box[1]), min(img.width, box[2]), min(img.height, box[3])))


def plan_faces(img: Image.Image, pre: PreprocessConfig, margin: float = MARGIN) -> FacePlan:
    """The views to score in face mode: one per face, else the whole image's."""
    faces = find_faces(img)
    if not faces:
        return FacePlan(faces=[], views=[eval_views(img, pre)])
    return FacePlan(faces=faces, views=[eval_views(crop_face(img, f, margin), pre) for f in faces])


def summarize(plan: FacePlan, probabilities, cfg: DetectorConfig) -> dict:
    """The face-mode score (max over faces) and the per-face details for the answer."""
    probs = [float(p) for p in np.asarray(probabilities, dtype=np.float64).reshape(-1)]
    if len(probs) != len(plan.views):
        raise ValueError(f"{len(probs)} probabilities for {len(plan.views)} face views")
    if not plan.faces:
        return {"score": probs[0], "faces": [], "face_found": False,
                "note": "no face found: the whole image was scored"}
    faces = [{"box": list(f.box), "confidence": f.confidence, "score": p, "label": label_for(p, cfg)}
             for f, p in zip(plan.faces, probs, strict=True)]
    worst = int(np.argmax(probs))
    return {"score": probs[worst], "faces": faces, "face_found": True, "max_face": worst}
