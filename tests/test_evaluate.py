"""`fakelens evaluate` end to end on a tiny random-weight model and small image files."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from models.commands import main
from models.core.checkpoint import CONFIG
from models.core.config import DetectorConfig
from models.core.dataset import Sample, list_samples
from models.core.preprocess import decode_image
from models.runtime.loader import load_detector
from tests.conftest import write_images
from training.evaluate import collect_logits
from training.robustness import PERTURBATIONS

HEADLINE = (
    "auc",
    "ap",
    "accuracy",
    "eer",
    "ece",
    "brier",
    "tpr_at_fpr",
    "threshold",
    "temperature",
    "target_fpr",
    "n",
    "n_real",
    "n_fake",
    "errors",
    "model",
    "robustness",
    "per_source",
    "per_generator",
)


def make_dataset(root, splits=("train", "val", "test"), per_split=4):
    """real/ and fake/<gen>/ PNGs plus a manifest with split/source/generator columns."""
    rows = []
    groups = [
        ("real", 0, "camera", "real"),
        ("fake/ganA", 1, "web", "ganA"),
        ("fake/diffB", 1, "web", "diffB"),
    ]
    for seed, (folder, label, source, gen) in enumerate(groups):
        paths = write_images(root / folder, per_split * len(splits), size=(40, 36), seed=seed)
        for i, p in enumerate(paths):
            rows.append([str(p.relative_to(root)), label, splits[i % len(splits)], source, gen])
    (root / "real" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    rows.append(["real/broken.png", 0, "test", "camera", "real"])
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "source", "generator"])
        w.writerows(rows)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_checkpoint):
    """One full `fakelens evaluate` run (stored calibration, robustness, plots) shared by tests."""
    root = tmp_path_factory.mktemp("eval")
    model = root / "model"
    shutil.copytree(tiny_checkpoint, model)
    manifest = make_dataset(root / "data")
    before = (model / CONFIG).read_text()
    rc = main(
        ["evaluate", str(model), "--data", str(manifest), "--out", str(root / "report"), "--batch-size", "5"]
    )
    assert rc == 0
    return {"model": model, "manifest": manifest, "out": root / "report", "config_before": before}


def test_report_has_metrics_plots_and_breakdowns(evaluated):
    out = evaluated["out"]
    report = json.loads((out / "report.json").read_text())
    assert set(HEADLINE) <= set(report)
    assert report["split"] == "test" and report["n"] == 12 and (report["n_real"], report["n_fake"]) == (4, 8)
    assert [e["path"].endswith("broken.png") for e in report["errors"]] == [True]
    assert set(report["tpr_at_fpr"]) == {"0.01", "0.05"} and 0.0 <= report["auc"] <= 1.0
    assert set(report["per_generator"]) == {"real", "ganA", "diffB"}
    assert report["per_generator"]["ganA"]["auc"] is None and report["per_generator"]["ganA"]["n"] == 4
    assert set(report["per_source"]) == {"camera", "web"}
    assert set(report["robustness"]) == set(PERTURBATIONS)
    assert all(r["n"] == 12 for r in report["robustness"].values())
    assert report["model"]["arch"] == "vit_tiny_patch16_224" and report["model"]["backend"] == "eager"
    for name in ("roc.png", "reliability.png", "score_histogram.png"):
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.size[0] > 100


def test_stored_calibration_is_used_and_left_alone(evaluated):
    report = json.loads((evaluated["out"] / "report.json").read_text())
    assert report["temperature"] == 1.5 and report["threshold"] == 0.5  # tiny_config's values
    assert report["calibration"] == {"fitted": False}
    assert (evaluated["model"] / CONFIG).read_text() == evaluated["config_before"]


def test_scores_equal_runtime_probabilities(evaluated):
    """No train/serve skew: evaluate's scores equal Detector.probabilities on the same files."""
    with open(evaluated["out"] / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    detector = load_detector(evaluated["model"], backend="eager", device="cpu")
    images = [decode_image(r["path"])[0] for r in rows]
    expected = detector.probabilities(images)
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, atol=1e-4)
    np.testing.assert_allclose([float(r["logit"]) for r in rows], detector.logits(images), atol=1e-4)
    assert {r["generator"] for r in rows} == {"real", "ganA", "diffB"}


def test_uncalibrated_model_is_fitted_on_val_and_saved(tmp_path, tiny_checkpoint, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    cfg = DetectorConfig.load(model / CONFIG)
    DetectorConfig(**{**cfg.__dict__, "temperature": 1.0, "threshold": 0.5, "metrics": {}}).save(
        model / CONFIG
    )
    manifest = make_dataset(tmp_path / "data", per_split=6)
    args = [
        "evaluate",
        str(model),
        "--data",
        str(manifest),
        "--out",
        str(tmp_path / "r"),
        "--no-robustness",
        "--no-plots",
        "--target-fpr",
        "0.2",
    ]
    assert main(args) == 0
    assert "AUC" in capsys.readouterr().out
    saved = DetectorConfig.load(model / CONFIG)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["calibration"]["fitted"] and saved.target_fpr == 0.2 and "val" in saved.metrics
    assert (report["temperature"], report["threshold"]) == (saved.temperature, saved.threshold)
    # The saved threshold keeps the val split's false-positive rate within the target.
    val_real = [s for s in list_samples(manifest, "val") if s.label == 0]
    probs = load_detector(model, backend="eager", device="cpu").probabilities(
        [decode_image(s.path)[0] for s in val_real]
    )
    assert np.mean(probs >= saved.threshold) <= 0.2


def test_empty_split_is_a_clear_error(tmp_path, tiny_checkpoint, capsys):
    # Only train rows: a manifest with train and val would hold its val back as test.
    manifest = make_dataset(tmp_path / "data", splits=("train",), per_split=1)
    rows = [r for r in manifest.read_text().splitlines() if "broken" not in r]
    manifest.write_text("\n".join(rows) + "\n")
    rc = main(
        [
            "evaluate",
            str(tiny_checkpoint),
            "--data",
            str(manifest),
            "--out",
            str(tmp_path / "r"),
            "--split",
            "test",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "'test' split" in err and "empty" in err and "train=" in err


def test_collect_logits_skips_unreadable_files(tmp_path, tiny_checkpoint):
    good = write_images(tmp_path, 3, seed=5)
    (tmp_path / "bad.jpg").write_bytes(b"<html>nope</html>")
    samples = [Sample(str(p), i % 2) for i, p in enumerate(good)]
    samples.insert(1, Sample(str(tmp_path / "bad.jpg"), 1))
    samples.append(Sample(str(tmp_path / "missing.png"), 0))
    detector = load_detector(tiny_checkpoint, backend="eager", device="cpu")
    logits, labels, kept, errors = collect_logits(detector, samples, batch_size=2)
    assert [s.path for s in kept] == [str(p) for p in good] and labels.tolist() == [0, 1, 0]
    assert [p for p, _ in errors] == [str(tmp_path / "bad.jpg"), str(tmp_path / "missing.png")]
    assert "not a supported image" in errors[0][1]
    np.testing.assert_allclose(logits, detector.logits([decode_image(p)[0] for p in good]), atol=1e-5)


def test_perturbations_change_pixels_not_labels():
    arr = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    for name, transform in PERTURBATIONS.items():
        out = transform(img)
        assert out.mode == "RGB", name
        expected = (20, 16) if name.startswith("downscale") else (40, 32)
        assert out.size == expected, name
        if not name.startswith("downscale"):
            assert not np.array_equal(np.asarray(out), arr), name
    blurred = np.asarray(PERTURBATIONS["blur_sigma1"](img), dtype=float)
    assert blurred.std() < arr.std()
