"""Evidence in `fakelens score` rows and in `fakelens inspect` / `fakelens explain`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from models import commands
from models.evidence.video import Sampling, VideoLimits, sample_frames
from models.runtime.loader import load_detector
from service.inputs import discover_inputs
from service.score import ScoreOptions, score_files
from service.writers import read_rows
from tests.media_helpers import astronaut, c2pa_signed_jpeg, encode_video, jpeg_bytes, png_with_text


@pytest.fixture(autouse=True)
def evidence_commands(monkeypatch):
    """`inspect` and `explain` come from pyproject's entry points; an install made before they were
    added does not list them yet, so add the entry point here unless it is already installed."""
    from importlib.metadata import EntryPoint

    installed = commands.entry_points

    def with_evidence(group):
        found = list(installed(group=group))
        if not any(ep.name == "evidence" for ep in found):
            found.append(EntryPoint("evidence", "service.evidence_cli:register", group))
        return found

    monkeypatch.setattr(commands, "entry_points", with_evidence)


def main(argv: list[str]) -> int:
    return commands.main(argv)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    (root / "a_signed.jpg").write_bytes(c2pa_signed_jpeg())
    (root / "b_sd.png").write_bytes(png_with_text(parameters="Steps: 20, Sampler: Euler"))
    astronaut().save(root / "c_face.jpg", quality=95)
    (root / "d_clip.mp4").write_bytes(encode_video(n=24, fps=12))
    (root / "e_broken.webm").write_bytes(b"not a video" * 50)
    (root / "f_plain.jpg").write_bytes(jpeg_bytes())
    return root


def rows_by_name(out) -> dict:
    return {r["path"].rsplit("/", 1)[-1]: r for r in read_rows(out)}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_score_rows_carry_provenance_faces_and_video(media, tiny_checkpoint, tmp_path, fmt):
    inputs = discover_inputs([str(media)])
    assert [p.rsplit("/", 1)[-1][0] for p in inputs] == list("abcdef")  # videos are discovered too
    out = tmp_path / f"scores.{fmt}"
    opts = ScoreOptions(model=str(tiny_checkpoint), device="cpu", batch_size=4, workers=2, progress=False,
                        faces=True, sampling=Sampling(frames=3))
    summary = score_files(inputs, out, opts)
    rows = rows_by_name(out)
    assert summary.errors == 1 and rows["e_broken.webm"]["error"].startswith("unsupported")
    signed = rows["a_signed.jpg"]
    assert (signed["label"], signed["reason"]) == ("synthetic", "declared")
    assert signed["provenance"]["c2pa"]["status"] == "untrusted_signer"
    assert rows["b_sd.png"]["reason"] == "declared"
    face = rows["c_face.jpg"]["detail"]
    assert face["face_found"] and rows["c_face.jpg"]["score"] == face["faces"][0]["score"]
    video = rows["d_clip.mp4"]["detail"]
    assert video["frames_scored"] == 3 and len(video["timeline"]) == 3
    assert rows["d_clip.mp4"]["score"] == pytest.approx(video["mean"]) and rows["d_clip.mp4"]["width"] == 64
    plain = rows["f_plain.jpg"]
    assert plain["reason"] == "model" and plain["provenance"]["declared_ai"] is False


def test_video_rows_match_local_frame_scores(media, tiny_checkpoint, tmp_path):
    out = tmp_path / "v.jsonl"
    score_files([str(media / "d_clip.mp4")], out,
                ScoreOptions(model=str(tiny_checkpoint), device="cpu", progress=False, sampling=Sampling(frames=4),
                             aggregate="max"))
    [row] = read_rows(out)
    detector = load_detector(tiny_checkpoint, "eager", "cpu")
    _, frames = sample_frames((media / "d_clip.mp4").read_bytes(), Sampling(frames=4), VideoLimits())
    expected = detector.probabilities([f.image for f in frames])
    assert row["score"] == pytest.approx(float(expected.max()), abs=1e-9)
    assert row["detail"]["aggregate"] == "max"


def test_inspect_prints_the_detect_answer(media, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "answer.json"
    assert main(["inspect", str(media / "a_signed.jpg"), "--model", str(tiny_checkpoint), "--device", "cpu",
                 "-o", str(out)]) == 0
    answer = json.loads(out.read_text())
    assert answer["reason"] == "declared" and answer["provenance"]["c2pa"]["present"]
    assert main(["inspect", str(media / "c_face.jpg"), "--model", str(tiny_checkpoint), "--faces"]) == 0
    assert json.loads(capsys.readouterr().out)["faces"]["face_found"]
    assert main(["inspect", str(media / "d_clip.mp4"), "--model", str(tiny_checkpoint), "--per-second", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["frames_scored"] == 4
    assert main(["inspect", str(media / "e_broken.webm"), "--model", str(tiny_checkpoint)]) == 2
    assert "unsupported" in capsys.readouterr().err


def test_explain_writes_overlay_and_grid(media, tiny_checkpoint, tmp_path):
    png, grid = tmp_path / "heat.png", tmp_path / "heat.json"
    assert main(["explain", str(media / "c_face.jpg"), "-o", str(png), "--json", str(grid),
                 "--model", str(tiny_checkpoint), "--grid", "4"]) == 0
    overlay = Image.open(png)
    assert overlay.size == (512, 512)
    heat = json.loads(grid.read_text())["heatmap"]
    assert (heat["rows"], heat["cols"]) == (4, 4) and heat["origin"] == [240, 240]
    assert np.isfinite(np.array(heat["values"], dtype=float)).all()
    assert main(["explain", str(media / "c_face.jpg"), "-o", str(png), "--model", str(tiny_checkpoint),
                 "--grid", "0"]) == 2


def test_score_writes_heatmaps(media, tiny_checkpoint, tmp_path):
    out, folder = tmp_path / "h.jsonl", tmp_path / "heat"
    inputs = [str(media / "c_face.jpg"), str(media / "e_broken.webm"), str(media / "f_plain.jpg")]
    assert main(["score", *inputs, "-o", str(out), "--model", str(tiny_checkpoint), "--device", "cpu",
                 "--heatmaps", str(folder), "--heat-grid", "4", "--no-progress"]) == 0
    rows = rows_by_name(out)
    detail = rows["c_face.jpg"]["detail"]
    assert (detail["heatmap"]["rows"], detail["heatmap"]["cols"]) == (4, 4)
    assert Image.open(detail["heatmap_png"]).size == (512, 512)
    assert rows["e_broken.webm"]["detail"] is None and len(list(folder.iterdir())) == 2
    assert main(["score", *inputs, "-o", str(tmp_path / "bad.jsonl"), "--model", str(tiny_checkpoint),
                 "--heatmaps", str(folder), "--heat-grid", "0"]) == 2


def test_ray_engine_scores_faces_and_videos(media, tiny_checkpoint, tmp_path):
    pytest.importorskip("ray")
    from service.ray_engine import score_files_ray

    inputs = [str(media / "c_face.jpg"), str(media / "d_clip.mp4")]
    out = tmp_path / "ray.jsonl"
    opts = ScoreOptions(model=str(tiny_checkpoint), device="cpu", workers=1, progress=False, faces=True,
                        sampling=Sampling(frames=2))
    score_files_ray(inputs, out, opts)
    rows = rows_by_name(out)
    assert rows["c_face.jpg"]["detail"]["face_found"]
    assert rows["d_clip.mp4"]["detail"]["frames_scored"] == 2
    with pytest.raises(ValueError, match="local engine"):
        score_files_ray(inputs, tmp_path / "x.jsonl", ScoreOptions(model=str(tiny_checkpoint), heatmaps="h"))
