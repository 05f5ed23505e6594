"""`family` and `family_score` in every answer (issue 18): one real `fakelens serve` of the
family-head model (/detect, /detect_batch, face mode, /explain, /detect_video, the drift
metrics), `fakelens score` rows in every format, a resume of a job an older fakelens started,
`fakelens inspect`, and the old model without a family head (family null everywhere).

Expected values come from the local detector (`load_detector(...).scores`) and the one
attribution rule (`attribute_row` on the final label); the verdict (label, score) must be
exactly what column 0 alone gives: attribution never changes it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from models.core.attribution import UNKNOWN, attribute_row
from models.core.preprocess import decode_image, eval_views
from models.core.verdict import decide
from models.evidence.faces import plan_faces
from models.evidence.families import video_summary
from models.evidence.video import Frame, Sampling, VideoFacts, VideoLimits, frame_plans, sample_frames
from models.runtime.loader import load_detector
from service.inputs import discover_inputs
from service.score import ScoreOptions, job_header, score_files
from service.writers import COLUMNS, LEGACY_COLUMNS, LEGACY_MARK, arrow_schema, read_rows, state_dir
from tests.media_helpers import astronaut, c2pa_signed_jpeg, encode_video
from tests.serve_helpers import serving

# Solid colours the family fixture model answers differently (checked below, not assumed):
# black and green real, red and blue a named family, white and grey "unknown".
COLOURS = {"black": (0, 0, 0), "red": (255, 0, 0), "white": (255, 255, 255), "green": (0, 255, 0),
           "blue": (0, 0, 255), "grey": (127, 127, 127), "brown": (200, 100, 50)}


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def images() -> dict[str, bytes]:
    rng = np.random.default_rng(5)
    out = {f"{name}.png": png(Image.new("RGB", (48, 40), c)) for name, c in COLOURS.items()}
    for i in range(4):
        out[f"noise{i}.png"] = png(Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)))
    return out


def expected(detector, data: bytes, provenance: dict | None = None, jpeg: bool = False) -> dict:
    """The answer's verdict and family from the local detector: label/score from column 0 alone.
    jpeg: the file is decoded from its bytes the way the model process does (FAKELENS_DECODE=model)."""
    if jpeg:
        [row] = detector.scores_from_jpegs([data])
        [probability] = detector.probabilities_from_jpegs([data])
    else:
        img = decode_image(data)[0]
        [row] = detector.scores([img])
        [probability] = detector.probabilities([img])
    label, _ = decide(float(probability), detector.config, provenance)
    return {"label": label, "score": float(probability), **attribute_row(label, row, detector.config)}


def assert_matches(body: dict, want: dict, name: str = "") -> None:
    assert body["label"] == want["label"], name
    assert body["score"] == pytest.approx(want["score"], abs=1e-5), name
    assert body["family"] == want["family"], (name, body["family_score"], want["family_score"])
    if want["family_score"] is None:
        assert body["family_score"] is None, name
    else:
        assert body["family_score"] == pytest.approx(want["family_score"], abs=1e-5), name
    if body["label"] == "real":
        assert body["family"] is None and body["family_score"] is None, name


@pytest.fixture(scope="module")
def local(family_checkpoint):
    return load_detector(family_checkpoint, "eager", "cpu")


# ---- without a server --------------------------------------------------------------------------


def test_fixture_images_cover_real_named_and_unknown(local):
    answers = [expected(local, data) for data in images().values()]
    families = {a["family"] for a in answers}
    assert None in families and UNKNOWN in families and families & set(local.config.attribution.families)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("family_images")
    for name, data in images().items():
        (root / name).write_bytes(data)
    (root / "zz_broken.png").write_bytes(b"not a png")
    (root / "zz_signed.jpg").write_bytes(c2pa_signed_jpeg())
    return root


def check_rows(rows: list[dict], local) -> None:
    for row in rows:
        name = Path(row["path"]).name
        assert set(COLUMNS) <= set(row), name
        if row["error"] is not None:
            assert row["family"] is None and row["family_score"] is None, name
            continue
        data = Path(row["path"]).read_bytes()
        assert_matches(row, expected(local, data, row["provenance"]), name)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_score_rows_carry_family_in_every_format(folder, family_checkpoint, local, tmp_path, fmt):
    inputs = discover_inputs([str(folder)])
    out = tmp_path / f"scores.{fmt}"
    score_files(inputs, out, ScoreOptions(model=str(family_checkpoint), backend="eager", device="cpu",
                                          batch_size=4, workers=2, progress=False))
    rows = read_rows(out)
    assert [r["path"] for r in rows] == inputs
    check_rows(rows, local)
    signed = next(r for r in rows if r["path"].endswith("zz_signed.jpg"))
    assert signed["reason"] == "declared" and signed["label"] == "synthetic" and signed["family"] is not None
    if fmt == "csv":
        assert out.read_text().splitlines()[0] == ",".join(COLUMNS)


def test_device_decode_path_rows_match_the_pixel_path(folder, family_checkpoint, local, tmp_path):
    """--decode-on device: JPEGs go to `scores_from_jpegs` (nvJPEG on CUDA, the same decode here)."""
    inputs = discover_inputs([str(folder)])
    jpegs = tmp_path / "jpegs"
    jpegs.mkdir()
    for p in inputs:
        if not Path(p).name.startswith("zz_"):
            Image.open(p).convert("RGB").save(jpegs / (Path(p).stem + ".jpg"), quality=95)
    (jpegs / "zz_cut.jpg").write_bytes((jpegs / "noise0.jpg").read_bytes()[:300])
    out = tmp_path / "device.jsonl"
    score_files(discover_inputs([str(jpegs)]), out, ScoreOptions(
        model=str(family_checkpoint), backend="eager", device="cpu", batch_size=4, workers=2, progress=False,
        decode_on="device"))
    rows = read_rows(out)
    assert rows[-1]["error"] is not None and rows[-1]["family"] is None
    for row in rows[:-1]:
        img = Image.open(row["path"]).convert("RGB")
        [want] = local.scores_from_jpegs([Path(row["path"]).read_bytes()])
        label, _ = decide(float(want[0]), local.config)
        assert row["label"] == label and row["score"] == pytest.approx(want[0], abs=1e-6)
        fam = attribute_row(label, want, local.config)
        assert row["family"] == fam["family"], row["path"]
        assert row["family_score"] == pytest.approx(fam["family_score"], abs=1e-6), row["path"]
        assert img.size == (row["width"], row["height"])


def legacy_text(rows: list[dict], fmt: str) -> str:
    """What a fakelens from before the family columns wrote for these rows."""
    if fmt == "jsonl":
        return "".join(json.dumps({c: r[c] for c in LEGACY_COLUMNS}) + "\n" for r in rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LEGACY_COLUMNS)
    for r in rows:
        cells = []
        for c in LEGACY_COLUMNS:
            v = r[c]
            if c in ("provenance", "detail") and v is not None:
                v = json.dumps(v, sort_keys=True)
            cells.append("" if v is None else repr(v) if isinstance(v, float) else v)
        writer.writerow(cells)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_resume_a_job_started_before_the_family_columns(folder, family_checkpoint, local, tmp_path, fmt):
    """An interrupted job whose OUT (and state) an older fakelens wrote: the rerun adds exactly the
    missing rows, with their families; the old rows stay as they were, with null families; a
    kill after the final rewrite is recognised by the rerun."""
    inputs = discover_inputs([str(folder)])
    opts = ScoreOptions(model=str(family_checkpoint), backend="eager", device="cpu", batch_size=4, workers=2,
                        progress=False)
    reference = tmp_path / f"reference.{fmt}"
    score_files(inputs, reference, opts)
    ref = read_rows(reference)
    done = 4  # a batch boundary of the reference run: the same batches, the same float scores
    out = tmp_path / f"scores.{fmt}"
    header = job_header(local.config, inputs, out, False)
    state_dir(out).mkdir()
    job = json.dumps(dataclasses.asdict(header))
    (state_dir(out) / "job.json").write_text(job)
    old = [{c: r[c] for c in LEGACY_COLUMNS} for r in ref[:done]]
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = state_dir(out) / "parts"
        parts.mkdir()
        schema = pa.schema([f for f in arrow_schema() if f.name in LEGACY_COLUMNS])
        table = pa.Table.from_pylist([{**r, "provenance": json.dumps(r["provenance"]), "detail": None}
                                      for r in old], schema=schema)
        pq.write_table(table, parts / "part-000000.parquet")
        position = 1
    else:
        out.write_text(legacy_text(old, fmt))
        position = out.stat().st_size
    errors = sum(r["error"] is not None for r in old)
    flagged = sum(r["label"] == "synthetic" for r in old)
    progress = {"done": done, "position": position, "scored": done - errors, "flagged": flagged, "errors": errors}
    (state_dir(out) / "progress.json").write_text(json.dumps(progress))

    summary = score_files(inputs, out, opts)
    assert summary.resumed_from == done and summary.total == len(inputs)
    assert not state_dir(out).exists()
    rows = read_rows(out)
    assert [r["path"] for r in rows] == inputs  # none lost, none twice
    for r, want in zip(rows[:done], ref[:done], strict=True):
        assert {c: r[c] for c in LEGACY_COLUMNS} == {c: want[c] for c in LEGACY_COLUMNS}
        assert r["family"] is None and r["family_score"] is None
    assert rows[done:] == ref[done:]
    if fmt == "csv":
        lines = out.read_text().splitlines()
        assert lines[0] == ",".join(COLUMNS) and all(len(r) == len(COLUMNS) for r in csv.reader(lines))
    if fmt == "jsonl":
        assert all(set(json.loads(line)) == set(COLUMNS) for line in out.read_text().splitlines())

    if fmt != "parquet":
        # killed after finish() rewrote OUT but before OUT.partial/ was removed: the rerun sees it is done
        finished = out.read_bytes()
        state_dir(out).mkdir()
        (state_dir(out) / "job.json").write_text(job)
        (state_dir(out) / "progress.json").write_text(json.dumps(
            {**progress, "done": len(inputs), "position": position + 10, "scored": summary.scored,
             "flagged": summary.flagged, "errors": summary.errors}))
        (state_dir(out) / LEGACY_MARK).write_text("")
        again = score_files(inputs, out, opts)
        assert again.resumed_from == len(inputs) and out.read_bytes() == finished
        assert not state_dir(out).exists()


def test_inspect_and_explain_answers_carry_family(folder, local):
    from service.evidence_cli import explain_file, inspect_file

    for name in ("red.png", "white.png", "black.png"):
        path = folder / name
        want = expected(local, path.read_bytes())
        assert_matches(inspect_file(str(path), local), want, name)
        answer, _ = explain_file(str(path), local, grid=2)
        assert_matches(answer, want, name)


def test_video_family_is_the_mean_over_frames_on_the_final_label(family_checkpoint, local):
    cfg = local.config
    frames = [Frame(i, float(i), True, Image.new("RGB", (48, 40), c)) for i, c in enumerate(COLOURS.values())]
    facts = VideoFacts("mp4", "h264", 48, 40, 7.0, 1.0)
    plans = frame_plans(frames, cfg.preprocess, faces=False)
    rows = local.scores_from_views([v for p in plans for v in p.views])
    out, family_row = video_summary(facts, frames, plans, rows, cfg, "mean", False)
    assert out["score"] == pytest.approx(rows[:, 0].mean())
    np.testing.assert_allclose(family_row[1:], rows[:, 1:].mean(axis=0))
    for entry, row in zip(out["timeline"], rows, strict=True):
        assert entry["family"] == attribute_row(entry["label"], row, cfg)["family"]
    # the verdict of the frames alone is unchanged by the family columns
    plain, _ = video_summary(facts, frames, plans, rows[:, 0], cfg, "mean", False)
    assert (plain["label"], plain["score"]) == (out["label"], out["score"])
    assert all(e["family"] is None for e in plain["timeline"])


def test_model_without_a_family_head_answers_null(tiny_checkpoint, folder, tmp_path):
    detector = load_detector(tiny_checkpoint, "eager", "cpu")
    assert detector.config.outputs == 1
    out = tmp_path / "scores.csv"
    inputs = discover_inputs([str(folder)])
    score_files(inputs, out, ScoreOptions(model=str(tiny_checkpoint), backend="eager", device="cpu", batch_size=4,
                                          workers=1, progress=False))
    rows = read_rows(out)
    assert len(rows) == len(inputs) and any(r["label"] == "synthetic" for r in rows)
    assert all(r["family"] is None and r["family_score"] is None for r in rows)
    from service.evidence_cli import inspect_file

    answer = inspect_file(str(folder / "red.png"), detector)
    assert answer["family"] is None and answer["family_score"] is None


# ---- one real server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(family_checkpoint, tmp_path_factory):
    # JPEGs cross as bytes and are decoded in the model process (`score_jpeg`), other files as views (`score`)
    env = {"FAKELENS_MAX_VIDEO_FRAMES": "8", "FAKELENS_MAX_BATCH_SIZE": "4", "FAKELENS_DECODE": "model"}
    with serving(family_checkpoint, tmp_path_factory.mktemp("serve_family"), env) as url:
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client


@pytest.mark.slow
def test_server_answers_carry_family(http, local):
    """/detect, /detect_batch, face mode, /explain, /detect_video and the drift metrics, on one server."""
    files = images()
    recorded = []  # the answers the drift metrics count
    for name, data in files.items():
        r = http.post("/detect", files={"image": (name, data)})
        assert r.status_code == 200, r.text
        assert_matches(r.json(), expected(local, data), name)
        recorded.append(r.json())

    jpegs = {}
    for name in ("red.png", "white.png", "black.png"):
        buf = io.BytesIO()
        Image.open(io.BytesIO(files[name])).save(buf, format="JPEG", quality=95)
        jpegs[name.replace(".png", ".jpg")] = buf.getvalue()
    names = list(files) + list(jpegs)
    parts = [("images", (n, {**files, **jpegs}[n])) for n in names]
    bad = [("images", ("bad.png", b"not an image")), ("images", ("cut.jpg", jpegs["red.jpg"][:400]))]
    parts[2:2] = bad
    r = http.post("/detect_batch", files=parts)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert all("error" in a and "family" not in a for a in results[2:4])
    del results[2:4]
    recorded += results
    got = {a["family"] for a in results}
    assert None in got and UNKNOWN in got and got & set(local.config.attribution.families)
    for name, answer in zip(names, results, strict=True):
        want = expected(local, files[name]) if name in files else expected(local, jpegs[name], jpeg=True)
        assert_matches(answer, want, name)

    # a provenance declaration makes the label synthetic: the family is attributed on that final label
    signed = c2pa_signed_jpeg()
    body = http.post("/detect", files={"image": ("signed.jpg", signed)}).json()
    assert body["reason"] == "declared"
    recorded.append(body)
    assert_matches(body, expected(local, signed, body["provenance"], jpeg=True))
    assert body["family"] is not None

    # face mode: the family of the face that gave the max, each face with its own
    photo = io.BytesIO()
    astronaut().save(photo, format="JPEG", quality=95)
    body = http.post("/detect", files={"image": ("face.jpg", photo.getvalue())}, data={"faces": "true"}).json()
    plan = plan_faces(decode_image(photo.getvalue())[0], local.config.preprocess)
    rows = local.scores_from_views(plan.views)
    worst = int(np.argmax(rows[:, 0]))
    assert body["faces"]["face_found"] and body["faces"]["max_face"] == worst
    assert body["score"] == pytest.approx(rows[worst, 0], abs=1e-5)
    assert body["family"] == attribute_row(body["label"], rows[worst], local.config)["family"]
    for face, row in zip(body["faces"]["faces"], rows, strict=True):
        assert face["family"] == attribute_row(face["label"], row, local.config)["family"]

    # /explain: the family of the unoccluded views
    for name in ("red.png", "white.png", "black.png"):
        r = http.post("/explain", files={"image": (name, files[name])}, data={"grid": "2", "overlay": "false"})
        assert r.status_code == 200, r.text
        assert_matches(r.json(), expected(local, files[name]), name)

    # /detect_video: the video's family from the mean family probabilities, each frame its own
    clip = encode_video(n=24, fps=12)
    r = http.post("/detect_video", files={"video": ("clip.mp4", clip)}, data={"frames": "4"})
    assert r.status_code == 200, r.text
    body = r.json()
    facts, frames = sample_frames(clip, Sampling(frames=4), VideoLimits())
    views = [eval_views(f.image, local.config.preprocess) for f in frames]
    rows = local.scores_from_views(views)
    assert body["score"] == pytest.approx(rows[:, 0].mean(), abs=1e-5)
    want = attribute_row(body["label"], [body["score"], *rows[:, 1:].mean(axis=0)], local.config)
    assert body["family"] == want["family"]
    if want["family_score"] is not None:
        assert body["family_score"] == pytest.approx(want["family_score"], abs=1e-5)
    for entry, row in zip(body["timeline"], rows, strict=True):
        assert entry["family"] == attribute_row(entry["label"], row, local.config)["family"]

    # drift monitoring (service/monitoring.py) still counts every /detect and /detect_batch answer
    from models.core.drift import parse_metrics

    text = http.get("/metrics").text
    stream = parse_metrics(text, "/metrics")
    assert stream.counts.sum() == 2 * len(files) + len(jpegs) + 1 == len(recorded)
    families = Counter(a["family"] for a in recorded if a["family"] is not None)
    assert stream.families == {k: float(v) for k, v in families.items()} and families  # fakelens_families_total
    # the JPEGs really took the model process's decode path (`score_jpeg`)
    decoded = re.findall(r"^fakelens_model_device_decoded_images_total(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    assert sum(float(v) for v in decoded) >= len(jpegs) + 1
