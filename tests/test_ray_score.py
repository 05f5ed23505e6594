"""`--engine ray` on a real local Ray instance (one ray.init for the module: it is slow to start)."""

from __future__ import annotations

import numpy as np
import pytest

from service.inputs import discover_inputs
from service.score import ScoreOptions, score_files
from service.writers import read_rows
from tests.conftest import write_images

ray = pytest.importorskip("ray", reason="the `distributed` extra (ray[data]) is not installed")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_images")
    write_images(root / "a", 5, size=(40, 48), seed=11)
    write_images(root / "b", 3, size=(64, 30), seed=12, fmt="JPEG")
    (root / "b" / "zz.png").write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    return discover_inputs([str(root)])


def test_ray_engine_matches_local_engine(local_ray, inputs, tiny_checkpoint, tmp_path):
    from service.ray_engine import score_files_ray

    opts = ScoreOptions(str(tiny_checkpoint), "eager", "cpu", batch_size=3, workers=1, progress=False)
    score_files(inputs, tmp_path / "local.jsonl", opts)
    summary = score_files_ray(inputs, tmp_path / "ray.parquet", opts)

    local, distributed = read_rows(tmp_path / "local.jsonl"), read_rows(tmp_path / "ray.parquet")
    assert [r["path"] for r in distributed] == inputs  # merged back into input order
    for a, b in zip(local, distributed, strict=True):
        assert {k: v for k, v in a.items() if k != "score"} == {k: v for k, v in b.items() if k != "score"}
    scores = [(a["score"], b["score"]) for a, b in zip(local, distributed, strict=True) if a["error"] is None]
    np.testing.assert_allclose(*zip(*scores, strict=True), rtol=0, atol=1e-5)
    assert distributed[-1]["error"].startswith("not_image") and distributed[-1]["score"] is None
    assert (summary.total, summary.scored, summary.errors) == (len(inputs), len(inputs) - 1, 1)
    assert not (tmp_path / "ray.parquet.ray-parts").exists()

    again = score_files_ray(inputs, tmp_path / "ray.parquet", opts)  # the same job: its output is complete
    assert again.already_complete and (again.scored, again.errors) == (len(inputs) - 1, 1)
    with pytest.raises(ValueError, match="already exists"):  # another job's output is not overwritten
        score_files_ray(inputs[:-1], tmp_path / "ray.parquet", opts)


def test_ray_engine_on_a_read_only_output_fails_in_one_line_before_scoring(inputs, tiny_checkpoint, tmp_path):
    """No Ray start, no picture scored: the unwritable -o is found first (exit 3 through `fakelens`)."""
    from service.ray_engine import score_files_ray
    from service.score import OutputError
    from tests.media_helpers import tmpfs

    opts = ScoreOptions(str(tiny_checkpoint), "eager", "cpu", batch_size=3, workers=1, progress=False)
    with tmpfs(tmp_path / "ro", "size=1m,ro") as mount:
        with pytest.raises(OutputError, match="Read-only file system") as err:
            score_files_ray(inputs, mount / "scores.parquet", opts, address="ray://127.0.0.1:1")  # never reached
        assert "-o" in str(err.value) and not any(mount.iterdir())
