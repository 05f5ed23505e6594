"""Truncated files of every format the service accepts, bombs and symlink loops: each becomes that
file's own error (an ImageError here, an error row in `fakelens score`), never a crash (issue 19, part 5)."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.core.preprocess import ALLOWED_FORMATS, ImageError, decode_image
from models.runtime.prepare import Limits, prepare
from service.inputs import discover_inputs
from service.score import ScoreOptions, job_header, score_files
from service.writers import JobState, Progress, read_rows, state_dir
from tests.conftest import tiny_config
from tests.media_helpers import tmpfs

REPO = Path(__file__).resolve().parents[1]
SAVE = {"TIFF": {"compression": "tiff_deflate"}}


def encoded(fmt: str, size=(128, 96), seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **SAVE.get(fmt, {}))
    return buf.getvalue()


def cuts(data: bytes) -> list[int]:
    """Prefix lengths: inside the header, just past it, the middle, near the end (the 3,000-byte WebP
    of the report when the file is longer)."""
    return sorted({20, 40, 64, 100, 3000 if len(data) > 3100 else len(data) // 3, len(data) // 2, len(data) - 40})


TRUNCATED = [(fmt, n) for fmt in ALLOWED_FORMATS for n in cuts(encoded(fmt))]


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height (1-bit gray) and holds one tiny IDAT: a bomb's header, cheaply."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt,n", TRUNCATED)
def test_every_truncated_format_is_an_image_error(fmt, n):
    data = encoded(fmt)[:n]
    with pytest.raises(ImageError) as e:
        prepare(data, tiny_config(), Limits())
    assert e.value.kind in ("truncated", "not_image"), (fmt, n, e.value)


def test_a_truncated_webp_is_truncated_not_an_oserror():
    """The report's reproduction: Pillow's "could not create decoder object" from Image.open."""
    with pytest.raises(ImageError) as e:
        decode_image(encoded("WEBP")[:3000])
    assert e.value.kind == "truncated" and "re-upload" in str(e.value)


@pytest.mark.parametrize("width,height", [(20_000, 10_000), (10_000, 10_000)])
def test_bombs_quote_the_configured_limit_and_how_to_raise_it(width, height):
    """Above Pillow's own 178.9 Mpx (first case) as well as between ours and Pillow's."""
    with pytest.raises(ImageError) as e:
        decode_image(png_header(width, height))
    message = str(e.value)
    assert e.value.kind == "too_many_pixels" and "40,000,000" in message and "FAKELENS_MAX_PIXELS" in message
    assert "--max-pixels" in message and "DOS" not in message


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory):
    """Good images, every format truncated at several lengths, a 100 Mpx header and a symlink loop."""
    root = tmp_path_factory.mktemp("hostile")
    for fmt in ALLOWED_FORMATS:
        ext = fmt.lower().replace("jpeg", "jpg")
        whole = encoded(fmt, seed=1)
        (root / f"good_{ext}.{ext}").write_bytes(whole)
        for n in cuts(whole):
            (root / f"cut_{ext}_{n:06d}.{ext}").write_bytes(whole[:n])
    (root / "warn_bomb.png").write_bytes(png_header(10_000, 10_000))
    (root / "sub").mkdir()
    (root / "sub" / "inner.png").write_bytes(encoded("PNG", seed=2))
    os.symlink("..", root / "sub" / "loop")
    return root


def score_cmd(folder: Path, out: Path, model: Path) -> list[str]:
    return [sys.executable, "-m", "models.commands", "score", str(folder), "-o", str(out), "--model", str(model),
            "--backend", "eager", "--device", "cpu", "--batch-size", "4", "--workers", "2", "--no-progress"]


def test_the_scorer_gives_every_bad_file_its_row_and_goes_on(hostile_folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "scores.jsonl"
    done = subprocess.run(score_cmd(hostile_folder, out, tiny_checkpoint), cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "DecompressionBombWarning" not in done.stderr, done.stderr
    rows = {Path(r["path"]).name: r for r in read_rows(out)}
    assert len(rows) == len(discover_inputs([str(hostile_folder)]))
    for name, row in rows.items():
        if name.startswith("cut_"):
            assert row["score"] is None and row["error"].split(":")[0] in ("truncated", "not_image"), row
        elif name.startswith("good_") or name == "inner.png":
            assert row["error"] is None and 0 <= row["score"] <= 1, row
    assert rows["warn_bomb.png"]["error"].startswith("too_many_pixels") and "40,000,000" in rows["warn_bomb.png"]["error"]
    assert rows["loop"]["error"].startswith("symlink_loop"), rows["loop"]
    assert not any("loop/" in r["path"] for r in rows.values())  # its files once, under their first path


def test_a_job_interrupted_among_bad_files_resumes(hostile_folder, tiny_checkpoint, tmp_path):
    """State as a kill -9 leaves it, part-way through the truncated files; the rerun finishes the job."""
    inputs = discover_inputs([str(hostile_folder)])
    reference = tmp_path / "reference.jsonl"
    score_files(inputs, reference, ScoreOptions(str(tiny_checkpoint), "eager", "cpu", 4, 2, progress=False))
    expected = read_rows(reference)
    lines = reference.read_bytes().splitlines(keepends=True)
    done = len(inputs) // 8 * 4  # on a batch boundary, so the later batches (and their float scores) match
    out = tmp_path / "scores.jsonl"
    state = JobState(out, job_header(json_config(tiny_checkpoint), inputs, out, False))
    out.write_bytes(b"".join(lines[:done]))
    state.commit(Progress().advance(expected[:done], out.stat().st_size))
    state.close()

    again = subprocess.run(score_cmd(hostile_folder, out, tiny_checkpoint), cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and f"resumed after {done}" in again.stderr, again.stderr
    assert read_rows(out) == expected and not state_dir(out).exists()


def json_config(model: Path):
    from models.core.config import DetectorConfig

    return DetectorConfig.load(model / "detector.json")


def test_an_unwritable_output_is_one_line_and_exit_3(hostile_folder, tiny_checkpoint, tmp_path):
    """-o under a regular file (ENOTDIR): any OSError writing the output, not only a full disk."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = subprocess.run(score_cmd(hostile_folder, blocker / "scores.jsonl", tiny_checkpoint), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 3 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "cannot write" in lines[0] and "rerun" in lines[0]


@pytest.fixture
def read_only_dir(tmp_path):
    with tmpfs(tmp_path / "ro", "size=1m,ro") as mount:
        yield mount


def test_a_read_only_file_system_is_one_line_and_exit_3(hostile_folder, tiny_checkpoint, read_only_dir):
    done = subprocess.run(score_cmd(hostile_folder, read_only_dir / "scores.jsonl", tiny_checkpoint), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 3 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "Read-only file system" in lines[0] and "-o" in lines[0]


def test_jsonl_rows_hold_objects_and_csv_parquet_hold_json_text(hostile_folder, tiny_checkpoint, tmp_path):
    import pyarrow.parquet as pq

    inputs = discover_inputs([str(hostile_folder / "sub" / "inner.png")])
    outs = {ext: tmp_path / f"scores.{ext}" for ext in ("jsonl", "csv", "parquet")}
    for out in outs.values():
        score_files(inputs, out, ScoreOptions(str(tiny_checkpoint), "eager", "cpu", 4, 1, progress=False))
    [line] = outs["jsonl"].read_text().splitlines()
    assert isinstance(json.loads(line)["provenance"], dict)  # an object, not JSON text inside JSON
    assert isinstance(json.loads(next(iter(read_csv_cells(outs["csv"]))))["declared_ai"], bool)
    assert isinstance(pq.read_table(outs["parquet"])["provenance"][0].as_py(), str)
    assert read_rows(outs["jsonl"]) == read_rows(outs["csv"]) == read_rows(outs["parquet"])


def read_csv_cells(out: Path):
    import csv

    return [row["provenance"] for row in csv.DictReader(out.open())]


def test_jsonl_written_with_text_fields_still_resumes(hostile_folder, tiny_checkpoint, tmp_path):
    """An older fakelens wrote provenance/detail as JSON text; a resume into its output keeps working."""
    inputs = discover_inputs([str(hostile_folder)])[:8]
    reference = tmp_path / "reference.jsonl"
    score_files(inputs, reference, ScoreOptions(str(tiny_checkpoint), "eager", "cpu", 4, 2, progress=False))
    expected = read_rows(reference)
    old = [{**r, "provenance": None if r["provenance"] is None else json.dumps(r["provenance"])} for r in expected]
    out = tmp_path / "scores.jsonl"
    state = JobState(out, job_header(json_config(tiny_checkpoint), inputs, out, False))
    out.write_text("".join(json.dumps(r) + "\n" for r in old[:4]))
    state.commit(Progress().advance(expected[:4], out.stat().st_size))
    state.close()
    score_files(inputs, out, ScoreOptions(str(tiny_checkpoint), "eager", "cpu", 4, 2, progress=False))
    assert read_rows(out) == expected
