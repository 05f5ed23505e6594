"""The generator-family head (issue 18 part 1): training, the open-set rule, every runtime, and
that attribution never changes a verdict. Tiny random-weight backbones, files written here."""

from __future__ import annotations

import csv
import json

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from models.core.attribution import UNKNOWN, attribute, attribute_row, names, score_rows, softmax
from models.core.checkpoint import load_model_dir
from models.core.config import AttributionConfig, DetectorConfig
from models.core.dataset import Sample, list_samples
from models.core.preprocess import decode_image
from models.core.verdict import label_for
from models.runtime.loader import load_detector
from tests.conftest import FAMILIES, TINY_VIT, family_config, write_images
from tests.export_helpers import export_tiny
from training.families import family_of, trainable_families
from training.train import train
from training.train_config import TrainConfig

# Each family paints its fakes with its own colour cast and block pattern: a "generator trace"
# a random tiny ViT's tokens still carry, so a linear family head can learn it in seconds.
TRACES = {"alpha": (255, 0, 0), "beta": (0, 255, 0), "gamma": (0, 0, 255), "mystery": (255, 255, 0)}


def _family_dataset(root) -> str:
    rows = []
    for sub, family, n, seed in (("real", "", 60, 1), ("alpha", "alpha", 24, 2), ("beta", "beta", 24, 3),
                                 ("gamma", "gamma", 24, 4), ("mystery", "", 12, 5)):
        for i, p in enumerate(write_images(root / sub, n, size=(40, 40), seed=seed)):
            if sub != "real":
                arr = np.asarray(Image.open(p)).astype(np.int32) // 2
                arr[::4, ::4] = TRACES[sub]
                arr[:, :, :] += np.array(TRACES[sub]) // 2
                Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p)
            split = "val" if i % 4 == 0 else ("test" if i % 4 == 1 and sub == "real" else "train")
            rows.append([str(p.relative_to(root)), "real" if sub == "real" else "fake", sub,
                         "g-" + sub if sub != "real" else "camera", split, family])
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "source", "generator", "split", "family"])
        w.writerows(rows)
    return str(root / "manifest.csv")


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(data=data, out=str(out), model="vit_tiny_patch16_224", model_kwargs=dict(TINY_VIT, depth=3),
                img_size=32, head="blocks", head_dim=16, feature_views=1, balance="source", epochs=2,
                batch_size=16, lr=3e-3, device="cpu", progress=False, save_every=None, seed=0)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One dataset, trained with and without the family head (the feature cache is shared)."""
    root = tmp_path_factory.mktemp("families")
    mp = pytest.MonkeyPatch()
    mp.setenv("FAKELENS_CACHE", str(root / "cache"))
    data = _family_dataset(root / "data")
    with_families = train(_cfg(data, root / "run"))
    without = train(_cfg(data, root / "plain", families="none"))
    mp.undo()
    return data, with_families.best_dir, without.best_dir


def test_the_family_column_or_the_generator_table_names_a_fakes_family():
    assert family_of(Sample("a.jpg", 1, generator="sd15-deliberate2")) == "sd15"
    assert family_of(Sample("a.jpg", 1, generator="gpt-image-1")) == "gpt-4o"
    assert family_of(Sample("a.jpg", 1, generator="whatever", family="mine")) == "mine"
    assert family_of(Sample("a.jpg", 1, generator="taef2")) is None  # twins are not a generator family
    assert family_of(Sample("a.jpg", 0, generator="sdxl")) is None  # reals have none
    few = [Sample(f"{i}.jpg", 1, family="rare") for i in range(3)]
    many = [Sample(f"m{i}.jpg", 1, family="common") for i in range(8)]
    assert trainable_families(few + many) == ("common",)


def test_the_open_set_rule_names_unknown_and_stays_silent_for_real():
    att = AttributionConfig(FAMILIES, rule="max-softmax", threshold=0.6)
    z = np.log([0.1, 0.8, 0.1])
    assert attribute("synthetic", z, att) == {"family": "beta", "family_score": pytest.approx(0.8)}
    assert attribute("uncertain", np.log([0.4, 0.35, 0.25]), att) == {"family": UNKNOWN,
                                                                     "family_score": pytest.approx(0.4)}
    assert attribute("real", z, att) == {"family": None, "family_score": None}
    assert attribute("synthetic", [], AttributionConfig()) == {"family": None, "family_score": None}
    assert names(np.log([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]]), att) == ["alpha", UNKNOWN]
    # the energy rule: the same softmax (scores) but a weak head (all logits low) is unknown
    energy = AttributionConfig(FAMILIES, rule="energy", threshold=2.0)
    strong, weak = np.array([5.0, 1.0, 0.0]), np.array([-1.0, -5.0, -6.0])
    assert attribute("synthetic", strong, energy)["family"] == "alpha"
    assert attribute("synthetic", weak, energy) == {"family": UNKNOWN,
                                                    "family_score": attribute("synthetic", strong, energy)["family_score"]}
    # the first family heads' detector.json (min_confidence) still loads, as a max-softmax rule
    old = DetectorConfig.from_dict({**family_config().to_dict(), "attribution": {
        "families": list(FAMILIES), "min_confidence": 0.7, "temperature": 1.0}})
    assert old.attribution.rule == "max-softmax" and old.attribution.threshold == 0.7
    with pytest.raises(ValueError, match="unknown"):
        AttributionConfig(("a", "unknown"))


def test_training_fits_a_family_head_with_a_threshold_chosen_on_val(runs):
    data, best, _ = runs
    model, cfg = load_model_dir(best)
    att = cfg.attribution
    assert att.families == FAMILIES and att.rule == "energy" and np.isfinite(att.threshold) and att.temperature > 0
    report = cfg.metrics["attribution"]
    counts = np.array(report["val_confusion"]["counts"])
    assert report["val_confusion"]["columns"] == [*FAMILIES, UNKNOWN] and counts.sum() == report["val_pictures"] == 18
    # about family_keep (90%) of val's known pictures keep a name, and the planted traces are learned
    assert 0.8 <= report["val_named_rate"] < 1.0 and report["val_accuracy_named"] >= 0.8
    assert report["val_no_family_pictures"] == 3  # the "mystery" generator's val fakes were measured too
    # served: test-free val images of each family mostly get their own name (or unknown), never real's null
    det = load_detector(best, "eager", "cpu")
    val = [s for s in list_samples(data) if s.split == "val" and s.family]
    rows = det.scores([decode_image(s.path)[0] for s in val])
    answers = [attribute(label_for(r[0], cfg), r[1:], att)["family"] for r in rows]
    right = [a == s.family for a, s in zip(answers, val, strict=True)]
    assert np.mean(right) >= 0.7, list(zip(answers, [s.family for s in val], strict=True))


def test_attribution_never_changes_the_verdict(runs):
    data, best, plain = runs
    _, with_cfg = load_model_dir(best)
    _, plain_cfg = load_model_dir(plain)
    assert plain_cfg.attribution.families == () and plain_cfg.outputs == 1
    for key in ("temperature", "threshold", "uncertain_band", "preprocess"):
        assert getattr(with_cfg, key) == getattr(plain_cfg, key), key
    images = [decode_image(s.path)[0] for s in list_samples(data) if s.split == "test"]
    a, b = load_detector(best, "eager", "cpu"), load_detector(plain, "eager", "cpu")
    np.testing.assert_allclose(a.scores(images)[:, 0], b.probabilities(images), rtol=0, atol=1e-6)
    assert a.scores(images).shape == (len(images), 4) and b.scores(images).shape == (len(images), 1)


def test_every_exported_runtime_carries_the_family_columns(family_checkpoint, image_folder, tmp_path):
    out = export_tiny(family_checkpoint, tmp_path / "exp")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["output"]["shape"] == ["batch", 4] and meta["output"]["families"] == list(FAMILIES)
    assert all(r["passed"] for r in meta["parity"].values() if isinstance(r, dict) and "passed" in r), meta["parity"]
    images = [decode_image(p)[0] for p in sorted(image_folder.rglob("*.png"))]
    eager = load_detector(family_checkpoint, "eager", "cpu").scores(images)
    for backend in ("onnx", "torchscript", "openvino-fp32"):
        rows = load_detector(out, backend, "cpu").scores(images)
        np.testing.assert_allclose(rows, eager, rtol=0, atol=1e-4, err_msg=backend)
    # a plain ONNX Runtime session, reading nothing of ours, sees the verdict and 3 family logits
    session = ort.InferenceSession(str(out / "model.onnx"))
    z = session.run(None, {"input": np.zeros((2, 3, 32, 32), np.float32)})[0]
    assert z.shape == (2, 4)
    cfg = DetectorConfig.load(out / "detector.json")
    rows = score_rows(z, cfg)
    np.testing.assert_allclose(rows[:, 1:], z[:, 1:])  # the row keeps the family logits for the open-set rule


def test_an_export_without_the_family_head_is_refused_at_load(tiny_checkpoint, tmp_path):
    """detector.json promises 3 families but the exported graph has one output: a clear error at
    load, not wrong columns at the first request."""
    out = export_tiny(tiny_checkpoint, tmp_path / "exp")
    broken = json.loads((out / "detector.json").read_text())
    broken["head"], broken["blocks"] = "blocks", [0, 1]
    broken["attribution"] = {"families": list(FAMILIES), "threshold": 0.5, "temperature": 1.0}
    (out / "detector.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="4 output"):
        load_detector(out, "onnx", "cpu")


def test_score_rows_are_a_calibrated_probability_then_a_family_distribution(family_checkpoint):
    cfg = DetectorConfig.load(family_checkpoint / "detector.json")
    outputs = np.array([[0.0, 2.0, 0.0, -2.0], [3.0, 0.0, 0.0, 0.0]])
    rows = score_rows(outputs, cfg)
    assert rows[0, 0] == pytest.approx(0.5) and rows[1, 0] == pytest.approx(1 / (1 + np.exp(-3.0 / cfg.temperature)))
    np.testing.assert_array_equal(rows[:, 1:], outputs[:, 1:])
    assert attribute_row("synthetic", rows[0], cfg)["family_score"] == pytest.approx(softmax(outputs[0, 1:]).max())
    assert attribute_row("synthetic", rows[0], cfg)["family"] == "alpha"
    assert attribute_row("synthetic", rows[1], cfg)["family"] == UNKNOWN  # 1/3 each: below 0.6


def test_evaluate_reports_the_confusion_matrix_and_writes_family_columns(runs, tmp_path):
    from training.evaluate import EvalConfig, run_evaluation

    data, best, _ = runs
    report = run_evaluation(EvalConfig(model=str(best), data=data, out=str(tmp_path / "rep"), split="val",
                                       backend="eager", device="cpu", robustness=False, plots=False))
    att = report["attribution"]
    assert att["columns"] == [*FAMILIES, UNKNOWN, "real"]
    assert set(att["rows"]) == {*FAMILIES, "(no known family)"}  # "mystery" has no family
    assert sum(att["rows"]["alpha"].values()) == 6 and att["named_accuracy"] >= 0.8
    with open(tmp_path / "rep" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    det = load_detector(best, "eager", "cpu")
    for r in rows[:8]:
        row = det.scores([decode_image(r["path"])[0]])[0]
        want = attribute_row(label_for(row[0], det.config), row, det.config)
        assert r["family"] == (want["family"] or "")
        assert (r["family_score"] == "") == (want["family_score"] is None)


def test_the_open_set_rule_is_a_training_choice(runs, tmp_path, monkeypatch):
    data, best, _ = runs
    monkeypatch.setenv("FAKELENS_CACHE", str(tmp_path / "cache"))
    result = train(_cfg(data, tmp_path / "run", family_rule="max-softmax"))
    _, cfg = load_model_dir(result.best_dir)
    _, energy = load_model_dir(best)
    assert cfg.attribution.rule == "max-softmax" and 0.0 < cfg.attribution.threshold <= 1.0
    assert energy.attribution.rule == "energy"
    assert cfg.attribution.temperature == energy.attribution.temperature  # the rule changes only the threshold
    with pytest.raises(ValueError, match="--family-rule"):
        _cfg(data, tmp_path / "x", family_rule="entropy")


def test_the_model_store_records_the_families(family_checkpoint):
    """What `fakelens export` registers: the families as a label, the open-set rule in the metadata."""
    from models.runtime.metadata import build_metadata
    from models.runtime.store import _labels, _store_metadata

    meta = build_metadata(DetectorConfig.load(family_checkpoint / "detector.json"))
    assert _labels(meta)["families"] == "alpha,beta,gamma"
    stored = _store_metadata(meta)
    assert stored["attribution"]["rule"] == "max-softmax" and stored["output"]["shape"] == ["batch", 4]
    json.dumps(stored)  # plain JSON, as BentoML requires
