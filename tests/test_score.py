"""The local batch scorer: scores match the detector, every format, bad files, resume and refusals."""

from __future__ import annotations

import dataclasses

import fsspec
import numpy as np
import pytest

from models.commands import main
from models.core.checkpoint import load_model_dir, save_model_dir
from models.core.preprocess import decode_image
from models.runtime.loader import load_detector
from models.runtime.prepare import Limits
from service.inputs import discover_inputs
from service.score import ScoreOptions, job_header, read_and_prepare, score_files, score_prepared
from service.writers import JobState, open_sink, read_rows, state_dir
from tests.conftest import write_images

N_IMAGES = 13  # not a multiple of the batch size, so the last batch is short


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("score_images")
    write_images(root / "png", 7, size=(40, 48), seed=3)
    write_images(root / "jpg", 5, size=(64, 30), seed=4, fmt="JPEG")
    whole = (root / "jpg" / "img_000.jpg").read_bytes()
    (root / "png" / "broken.jpg").write_bytes(whole[: len(whole) // 2])
    return discover_inputs([str(root)])


def opts(model, **kw) -> ScoreOptions:
    base = dict(backend="eager", device="cpu", batch_size=4, workers=2, progress=False)
    return ScoreOptions(model=str(model), **{**base, **kw})


@pytest.fixture(scope="module")
def reference(images, tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "scores.jsonl"
    summary = score_files(images, out, opts(tiny_checkpoint))
    return read_rows(out), summary


def test_scores_match_the_detector_and_bad_files_get_error_rows(images, reference, tiny_checkpoint):
    rows, summary = reference
    assert [r["path"] for r in rows] == images and len(images) == N_IMAGES
    detector = load_detector(tiny_checkpoint, "eager", "cpu")
    good = [r for r in rows if r["error"] is None]
    decoded = [decode_image(r["path"])[0] for r in good]
    np.testing.assert_allclose([r["score"] for r in good], detector.probabilities(decoded), rtol=0, atol=1e-6)
    for r, img in zip(good, decoded, strict=True):
        assert (r["width"], r["height"]) == img.size
        assert r["label"] == ("synthetic" if r["score"] >= 0.5 else "real")
        assert (r["model"], r["model_version"], r["threshold"]) == ("fakelens-detector", "test", 0.5)
    (bad,) = [r for r in rows if r["error"] is not None]
    assert bad["path"].endswith("broken.jpg") and bad["error"].startswith("truncated")
    assert bad["score"] is None and bad["label"] is None and bad["width"] is None
    assert (summary.scored, summary.errors, summary.total) == (N_IMAGES - 1, 1, N_IMAGES)
    assert summary.flagged == sum(r["label"] == "synthetic" for r in rows)


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_csv_and_parquet_hold_the_same_rows(images, reference, tiny_checkpoint, tmp_path, ext):
    out = tmp_path / f"scores.{ext}"
    score_files(images, out, opts(tiny_checkpoint, workers=1))
    assert read_rows(out) == reference[0]  # exact: same batches, and floats round-trip in every format
    assert not state_dir(out).exists()


def test_thread_decoding_gives_the_same_rows_as_process_decoding(images, reference, tiny_checkpoint, tmp_path):
    """Worker processes (uint8 views come back by pickle) and threads must agree exactly."""
    rows = {}
    for mode in ("processes", "threads"):
        score_files(images, tmp_path / f"{mode}.jsonl", opts(tiny_checkpoint, decode=mode))
        rows[mode] = read_rows(tmp_path / f"{mode}.jsonl")
    assert rows["processes"] == rows["threads"] == reference[0]


@pytest.mark.parametrize("decode", ["threads", "processes"])
def test_jpegs_decoded_on_the_model_device_score_as_the_workers_decode_them(images, tiny_checkpoint, tmp_path,
                                                                            decode):
    jpg = [p for p in images if p.endswith(".jpg") and "broken" not in p][0]
    whole = open(jpg, "rb").read()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "garbled.jpg").write_bytes(whole[:200] + b"\x00" * 64 + b"\xff\xd9")  # header ok, stream not
    inputs = [*images, str(tmp_path / "in" / "garbled.jpg")]
    rows = {}
    for place in ("workers", "device"):
        score_files(inputs, tmp_path / f"{place}.jsonl", opts(tiny_checkpoint, decode=decode, decode_on=place))
        rows[place] = read_rows(tmp_path / f"{place}.jsonl")
    workers, device = rows["workers"], rows["device"]
    assert [r["path"] for r in device] == inputs
    for w, d in zip(workers, device, strict=True):
        assert (d["width"], d["height"], d["label"], d["error"] is None) == (
            w["width"], w["height"], w["label"], w["error"] is None)
        if w["error"] is None:
            assert d["score"] == pytest.approx(w["score"], abs=1e-6)
        else:
            assert d["error"].split(":")[0] == w["error"].split(":")[0]  # the same kind of error row
    assert device[-1]["error"].startswith("truncated")


def test_unknown_decode_mode_is_refused_with_the_choices(tiny_checkpoint):
    with pytest.raises(ValueError, match="auto, processes, threads"):
        opts(tiny_checkpoint, decode="gpu")


def test_memory_urls_score_like_local_files(images, reference, tiny_checkpoint, tmp_path):
    fs = fsspec.filesystem("memory")
    for p in images[:3]:
        fs.pipe(f"/fl-score/{p.rsplit('/', 1)[1]}", open(p, "rb").read())
    try:
        out = tmp_path / "mem.jsonl"
        score_files(discover_inputs(["memory://fl-score"]), out, opts(tiny_checkpoint))
        by_name = {r["path"].rsplit("/", 1)[1]: r["score"] for r in reference[0]}
        got = {r["path"].rsplit("/", 1)[1]: r["score"] for r in read_rows(out)}
        assert len(got) == 3
        np.testing.assert_allclose([got[k] for k in got], [by_name[k] for k in got], rtol=0, atol=1e-6)
    finally:
        fs.rm("/fl-score", recursive=True)


@pytest.fixture(scope="module")
def median_threshold_model(reference, tiny_checkpoint, tmp_path_factory):
    """The same weights with the threshold at the median score, so about half are flagged."""
    model, cfg = load_model_dir(tiny_checkpoint)
    scores = [r["score"] for r in reference[0] if r["score"] is not None]
    folder = tmp_path_factory.mktemp("median_model")
    save_model_dir(
        folder, model, dataclasses.replace(cfg, threshold=float(np.median(scores)), version="median")
    )
    return folder


def test_only_synthetic_writes_the_flagged_rows(images, median_threshold_model, tmp_path):
    full, flagged = tmp_path / "all.jsonl", tmp_path / "flagged.jsonl"
    score_files(images, full, opts(median_threshold_model))
    summary = score_files(images, flagged, opts(median_threshold_model, only_synthetic=True))
    expected = [r for r in read_rows(full) if r["label"] == "synthetic"]
    assert 0 < len(expected) < N_IMAGES
    assert read_rows(flagged) == expected and summary.flagged == len(expected)


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_resume_drops_an_uncommitted_torn_tail(images, reference, tiny_checkpoint, tmp_path, ext):
    """The state a kill mid-write leaves: one committed batch, then half-written data after it."""
    out = tmp_path / f"scores.{ext}"
    detector = load_detector(tiny_checkpoint, "eager", "cpu")
    state = JobState(out, job_header(detector.config, images, out, False))
    sink = open_sink(out, 0)
    rows = score_prepared(detector, [read_and_prepare(p, detector.config, Limits(max_pixels=10**7)) for p in images[:4]])
    state.commit(state.progress.advance(rows, sink.write(rows)))
    sink.write(rows[:2])  # written but never committed
    sink.close()
    if ext == "parquet":
        (state_dir(out) / "parts" / "part-000009.parquet").write_bytes(b"PAR1 torn")
    else:
        with open(out, "ab") as f:
            f.write(b'{"path": "/torn' if ext == "jsonl" else b"/torn,0.3")
    state.close()
    summary = score_files(images, out, opts(tiny_checkpoint))
    assert summary.resumed_from == 4 and summary.total == N_IMAGES
    assert read_rows(out) == reference[0]


def test_resume_into_a_different_model_or_inputs_is_refused(
    images, tiny_checkpoint, median_threshold_model, tmp_path
):
    out = tmp_path / "scores.jsonl"
    cfg = load_detector(tiny_checkpoint, "eager", "cpu").config
    JobState(out, job_header(cfg, images, out, False)).close()  # an interrupted job with no rows yet
    with pytest.raises(ValueError, match="model version: 'test' then, 'median' now"):
        score_files(images, out, opts(median_threshold_model))
    with pytest.raises(ValueError, match="input list"):
        score_files(images[:-1], out, opts(tiny_checkpoint))
    with pytest.raises(ValueError, match="only-synthetic"):
        score_files(images, out, opts(tiny_checkpoint, only_synthetic=True))
    score_files(images[:-1], out, opts(median_threshold_model, overwrite=True))
    assert len(read_rows(out)) == N_IMAGES - 1 and read_rows(out)[0]["model_version"] == "median"


def test_a_finished_output_is_not_overwritten_by_accident(images, tiny_checkpoint, tmp_path):
    out = tmp_path / "scores.jsonl"
    out.write_text("precious\n")
    with pytest.raises(ValueError, match="already exists"):
        score_files(images, out, opts(tiny_checkpoint))
    assert out.read_text() == "precious\n"


def test_a_second_writer_is_locked_out(images, tiny_checkpoint, tmp_path):
    out = tmp_path / "scores.jsonl"
    cfg = load_detector(tiny_checkpoint, "eager", "cpu").config
    first = JobState(out, job_header(cfg, images, out, False))
    try:
        with pytest.raises(ValueError, match="another `fakelens score` is writing"):
            score_files(images, out, opts(tiny_checkpoint))
    finally:
        first.close()


def test_cli_exit_codes(images, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "cli.csv"
    broken = next(p for p in images if p.endswith("broken.jpg"))
    args = [
        "score",
        *images[:3],
        broken,
        "-o",
        str(out),
        "--model",
        str(tiny_checkpoint),
        "--backend",
        "eager",
    ]
    assert main([*args, "--no-progress", "--batch-size", "2"]) == 0  # a broken image is not a job failure
    assert "4 inputs: 3 scored" in capsys.readouterr().err
    assert main([*args, "--no-progress"]) == 0  # the same job again: its finished OUT is success
    assert "already complete: 4 inputs, 3 scored" in capsys.readouterr().err
    other = ["score", *images[:2], "-o", str(out), "--model", str(tiny_checkpoint), "--backend", "eager"]
    assert main([*other, "--no-progress"]) == 2  # OUT holds another job's rows: refused with a message
    assert "--overwrite" in capsys.readouterr().err
    assert (
        main(
            [
                "score",
                str(tmp_path / "nope"),
                "-o",
                str(tmp_path / "x.jsonl"),
                "--model",
                str(tiny_checkpoint),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert main(["score", images[0], "-o", str(tmp_path / "x.txt"), "--model", str(tiny_checkpoint)]) == 2
    assert "unknown extension" in capsys.readouterr().err


def test_decode_workers_import_no_torch():
    """The scorer's decode processes preload service.score: it must not pull in torch (1.4 s and
    hundreds of MB per worker); the model side imports it where it is used."""
    import subprocess
    import sys

    code = "import sys, service.score, models.runtime.jpeg_decode; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
