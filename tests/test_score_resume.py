"""Kill -9 a real `fakelens score` process part-way, rerun the same command: exactly one row per input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.inputs import discover_inputs
from service.score import ScoreOptions, score_files
from service.writers import read_rows, state_dir
from tests.conftest import write_images
from tests.media_helpers import tmpfs

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 300
BATCH = 4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_images")
    write_images(root, N_IMAGES, size=(36, 36), seed=7)
    (root / "zz_broken.png").write_bytes(b"not a png")
    return root


def command(folder: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "models.commands", "score", str(folder), "-o", str(out), "--model", str(model),
        "--backend", "eager", "--device", "cpu", "--batch-size", str(BATCH), "--workers", "2", "--no-progress", *extra,
    ]  # fmt: skip


def committed(out: Path) -> int:
    try:
        return json.loads((state_dir(out) / "progress.json").read_text())["done"]
    except FileNotFoundError:
        return 0


def kill_after(cmd: list[str], out: Path, min_done: int) -> int:
    """Start `cmd`, SIGKILL it once `min_done` inputs are committed; the count it had reached."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        done = committed(out)
        if done >= min_done:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return done
        time.sleep(0.002)
    proc.kill()
    err = proc.communicate()[1].decode()
    pytest.fail(f"the run ended (rc={proc.returncode}) before {min_done} rows were committed: {err[-2000:]}")


@pytest.fixture(scope="module")
def reference(folder, tiny_checkpoint, tmp_path_factory):
    """An uninterrupted run of the same job (same batch boundaries, so identical float scores)."""
    out = tmp_path_factory.mktemp("resume_ref") / "reference.jsonl"
    inputs = discover_inputs([str(folder)])
    score_files(inputs, out, ScoreOptions(str(tiny_checkpoint), "eager", "cpu", BATCH, 2, progress=False))
    return inputs, read_rows(out)


@pytest.mark.parametrize("ext,only_synthetic", [("jsonl", False), ("parquet", True)])
def test_kill9_then_rerun_gives_exactly_one_row_per_input(
    folder, tiny_checkpoint, reference, tmp_path, ext, only_synthetic
):
    inputs, expected = reference
    out = tmp_path / f"scores.{ext}"
    cmd = command(folder, out, tiny_checkpoint, *(["--only-synthetic"] if only_synthetic else []))
    reached = kill_after(cmd, out, min_done=40)
    assert 0 < reached < len(inputs) and state_dir(out).is_dir()

    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resumed after {reached}" in done.stderr and not state_dir(out).exists()
    rows = read_rows(out)
    if only_synthetic:
        # OUT never held the real rows, yet the resume knew which inputs were done.
        expected = [r for r in expected if r["label"] == "synthetic"]
        assert len(expected) > 5
    else:
        assert [r["path"] for r in rows] == inputs  # one row per input, in order: none lost, none twice
        assert rows[-1]["error"].startswith("not_image")
    assert rows == expected  # scores identical to the uninterrupted run

    # Killed after its last commit, or simply retried: a finished job reruns as a success.
    before = out.read_bytes()
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stderr and out.read_bytes() == before


def test_other_file_at_out_is_still_refused(folder, tiny_checkpoint, reference, tmp_path):
    out = tmp_path / "scores.jsonl"
    out.write_text('{"path": "not/this/job.png", "model": "x"}\n')
    done = subprocess.run(command(folder, out, tiny_checkpoint), cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "not an interrupted fakelens job" in done.stderr


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs: a real full disk (ENOSPC) without filling the machine's."""
    with tmpfs(tmp_path / "disk") as mount:
        yield mount


def test_full_disk_is_one_line_and_exit_3_then_resumes(folder, tiny_checkpoint, reference, tiny_disk):
    inputs, expected = reference
    filler = tiny_disk / "filler"
    with open(filler, "wb") as f:  # leave room for ~1/3 of the rows, so the job dies part-way
        f.write(b"\0" * (1024 * 1024 - 40 * 1024))
    out = tiny_disk / "scores.jsonl"
    cmd = command(folder, out, tiny_checkpoint)
    full = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert full.returncode == 3, full.stderr
    lines = [line for line in full.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in full.stderr, full.stderr
    assert "no space left" in lines[0] and "rerun" in lines[0]
    assert 0 < committed(out) < len(inputs)

    filler.unlink()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resumed after" in done.stderr
    assert read_rows(out) == expected
