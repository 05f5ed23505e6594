"""Content-matched synthetic twins (`fakelens twins`): one per real picture, stored like its real,
resumable, and listed with the real's split and picture so no view of a test picture is trained on."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
from PIL import Image

from models.commands import main
from models.core.dataset import list_samples
from training.twins import DECODER_FILE, ENCODER_FILE, Autoencoder, pick_reals


@pytest.fixture
def random_taef2(tmp_path):
    """TAEF2's architecture with random weights (the real ones live in ../shared, which tests never read)."""
    torch.manual_seed(0)
    model = Autoencoder()
    folder = tmp_path / "taef2"
    folder.mkdir()
    torch.save(model.encoder.state_dict(), folder / ENCODER_FILE)
    torch.save(model.decoder.state_dict(), folder / DECODER_FILE)
    return folder


def test_reconstruction_keeps_the_size_of_any_picture(random_taef2):
    model = Autoencoder.load(random_taef2)
    rgb = np.random.default_rng(0).integers(0, 256, size=(37, 50, 3), dtype=np.uint8)
    out = model.reconstruct(rgb)
    assert out.shape == rgb.shape and out.dtype == np.uint8


def test_twins_are_written_like_their_reals_and_resume(random_taef2, demo, tmp_path, capsys):
    out = tmp_path / "twins"
    assert main(["twins", "--data", str(demo), "--weights", str(random_taef2), "--out", str(out), "--limit", "6"]) == 0
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    reals = {s.path: s for s in list_samples(str(demo)) if s.label == 0}
    assert len(rows) == 6 and {r["label"] for r in rows} == {"fake"} and {r["generator"] for r in rows} == {"taef2"}
    for r in rows:
        real = reals[r["parent"]]
        assert r["split"] == real.split in ("train", "val")
        twin = Image.open(out / r["path"])
        assert twin.format == "JPEG" and twin.size == Image.open(real.path).size
        assert "exif" not in twin.info and "icc_profile" not in twin.info
    stamps = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    assert main(["twins", "--data", str(demo), "--weights", str(random_taef2), "--out", str(out), "--limit", "6"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == stamps  # nothing recomputed
    # listed beside the real data, a twin is a fake of its real's picture, in its real's split
    both = list_samples(f"{demo},{out / 'manifest.csv'}")
    twins = [s for s in both if s.generator == "taef2"]
    assert len(twins) == 6 and all(s.label == 1 and s.picture for s in twins)


def test_twins_spread_over_sources_and_refuse_missing_weights(demo, tmp_path):
    picked = pick_reals(list_samples(str(demo)), 4)
    assert len(picked) == 4 and all(s.label == 0 and s.split != "test" for s in picked)
    with pytest.raises(FileNotFoundError, match="taef2_encoder.pth"):
        Autoencoder.load(tmp_path)


def test_a_twin_is_not_cleaner_than_jpeg_q95():
    """Stored as the shared data is: a q95 4:4:4 JPEG, never a lossless file."""
    from training.twins import store_like_real

    data = store_like_real(np.full((16, 16, 3), 128, np.uint8))
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.info.get("progressive", 0) == 0
