"""`fakelens demo-data`: deterministic, no format/size shortcut, and a real generator fingerprint."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from models.commands import main
from models.core.dataset import list_samples
from models.core.metrics import roc_auc
from training.demo_data import SIZE_RANGE, write_demo_dataset


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_writes_layout_and_manifest(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "d"), "--n", "12"]) == 0
    root = tmp_path / "d"
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    assert len(rows) == 12 and set(rows[0]) >= {"path", "label", "source", "generator"}
    assert all((root / r["path"]).is_file() for r in rows)
    assert {r["generator"] for r in rows if r["label"] == "fake"} == {"upsampler-k4", "upsampler-k3"}
    assert all(r["path"].startswith(f"fake/{r['generator']}/") for r in rows if r["label"] == "fake")
    # The folder loader and the manifest agree on labels and splits.
    by_folder = {(s.path, s.label, s.split) for s in list_samples(root)}
    by_manifest = {(s.path, s.label, s.split) for s in list_samples(root / "manifest.csv")}
    assert by_folder == by_manifest
    # Re-running into the same folder replaces the earlier output instead of mixing with it.
    assert main(["demo-data", str(root), "--n", "4"]) == 0
    assert len(list_samples(root)) == 4


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        write_demo_dataset(tmp_path, n=4)


def test_deterministic_given_seed(tmp_path):
    write_demo_dataset(tmp_path / "a", n=10, seed=3)
    write_demo_dataset(tmp_path / "b", n=10, seed=3)
    write_demo_dataset(tmp_path / "c", n=10, seed=4)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


@pytest.fixture(scope="module")
def demo60(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo60")
    write_demo_dataset(root, n=60, seed=0)
    return root


def test_classes_share_format_and_size_distribution(demo60):
    facts = {0: [], 1: []}
    for s in list_samples(demo60):
        with Image.open(s.path) as im:
            facts[s.label].append((im.format, im.mode, *im.size))
    for label, items in facts.items():
        assert {(f, m) for f, m, _, _ in items} == {("PNG", "RGB")}, label
        sides = np.array([side for *_, w, h in items for side in (w, h)])
        assert sides.min() >= SIZE_RANGE[0] and sides.max() <= SIZE_RANGE[1]
        assert sides.min() < 85 and sides.max() > 140, "each class spans the size range"
    mean_area = [np.mean([w * h for *_, w, h in facts[c]]) for c in (0, 1)]
    assert abs(mean_area[0] - mean_area[1]) / np.mean(mean_area) < 0.25


def test_fake_class_carries_a_pixel_level_fingerprint(demo60):
    """A fixed high-pass energy statistic separates the classes: the difference is in how the
    pixels were formed (noise vs. upsampler), not in format or size."""
    labels, energy = [], []
    for s in list_samples(demo60):
        a = np.asarray(Image.open(s.path), dtype=np.float64).mean(-1)
        lap = 4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]
        labels.append(s.label)
        energy.append(np.abs(lap).mean())
    assert roc_auc(np.array(labels), np.array(energy)) > 0.85
