"""Static int8 (models/runtime/quantize.py): the verdict gate's arithmetic, and `auto` following its record."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from models.runtime.backends import openvino_core
from models.runtime.detector import default_backend
from models.runtime.loader import load_detector
from models.runtime.metadata import INT8_BACKENDS, INT8_FILES, METADATA
from models.runtime.quantize import (
    MAX_FPR_MOVE_POINTS,
    add_int8_static,
    choose,
    gate,
    is_transformer,
)
from tests.conftest import tiny_config
from tests.export_helpers import export_tiny

LABELS = np.array([0] * 100 + [1] * 100)


def _scores(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(0.0, 0.6, 100), rng.uniform(0.4, 1.0, 100)])


def test_gate_passes_identical_scores():
    p = _scores()
    result = gate(p, p.copy(), LABELS, tiny_config())
    assert result["passed"] and result["auc_drop"] == 0 and result["fpr_move_points"] == 0
    assert 0 < result["fpr_fp32"] < 1  # the threshold 0.5 cuts through the reals


def test_gate_refuses_an_auc_drop():
    p = _scores()
    worse = p.copy()
    worse[:20] = 0.95  # twenty reals now outrank most fakes
    result = gate(p, worse, LABELS, tiny_config())
    assert result["auc_drop"] > 0.005 and not result["passed"]


def test_gate_refuses_a_moved_fpr_even_when_auc_is_unchanged():
    """A monotonic shift keeps every ranking (AUC equal) but moves reals across the threshold."""
    p = _scores()
    shifted = np.clip(p + 0.05, 0, 1)
    result = gate(p, shifted, LABELS, tiny_config())
    assert abs(result["auc_drop"]) < 1e-12
    assert result["fpr_move_points"] > MAX_FPR_MOVE_POINTS and not result["passed"]


@pytest.fixture(scope="module")
def quantized(tiny_checkpoint, demo, tmp_path_factory):
    from models.core.dataset import list_samples

    exp = export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("q") / "exp")
    calib = [s.path for s in list_samples(demo / "manifest.csv", split="train")][:16]
    val = [(s.path, s.label) for s in list_samples(demo / "manifest.csv")]
    record = add_int8_static(exp, calib, val, log=lambda _: None)
    return exp, record


def test_int8_static_records_both_figures_and_runs(quantized, demo):
    exp, record = quantized
    saved = json.loads((exp / METADATA).read_text())["int8_static"]
    assert saved == json.loads(json.dumps(record))
    assert set(saved["candidates"]) == set(INT8_BACKENDS)  # nncf is a dev dependency: both methods ran
    for name, c in saved["candidates"].items():
        assert (exp / c["file"]).is_file()
        for key in ("auc_fp32", "auc_int8", "auc_drop", "fpr_fp32", "fpr_int8", "fpr_move_points", "passed",
                    "faster", "img_s", "method"):
            assert key in c
        assert c["val_images"] == 60
        det = load_detector(exp, backend=name, device="cpu")
        assert det.probabilities_from_views([np.zeros((1, 32, 32, 3), np.uint8)]).shape == (1,)
    assert saved["calibration_images"] == 16 and saved["backend"] == choose(saved["candidates"])
    assert (exp / "model.int8-static.bin").is_file()  # the IR's weights beside its .xml
    ir = openvino_core().read_model(str(exp / INT8_FILES["openvino-int8"]))
    assert is_transformer(ir)  # the tiny ViT takes the SmoothQuant path
    assert sum(op.get_type_name() == "FakeQuantize" for op in ir.get_ops()) >= 4


def _candidate(passed: bool, faster: bool, img_s: float) -> dict:
    return {"passed": passed, "faster": faster, "img_s": img_s}


def test_choose_prefers_the_fastest_runtime_that_keeps_the_verdicts():
    fast_wrong = _candidate(False, True, 90.0)
    assert choose({"a": fast_wrong, "b": _candidate(True, True, 50.0), "c": _candidate(True, True, 60.0)}) == "c"
    # none offerable: the record names the fastest, and its own passed/faster keep auto away from it
    assert choose({"a": fast_wrong, "b": _candidate(True, False, 20.0)}) == "a"


@pytest.mark.parametrize("passed,faster", [(True, True), (False, True), (True, False)])
def test_auto_offers_int8_only_when_the_gate_passed_and_it_is_faster(quantized, tmp_path, passed, faster):
    import shutil

    exp, record = quantized
    copy = tmp_path / "exp"
    shutil.copytree(exp, copy)
    meta = json.loads((copy / METADATA).read_text())
    meta["int8_static"].update(passed=passed, faster=faster)
    (copy / METADATA).write_text(json.dumps(meta))
    assert default_backend(copy, "cpu") == (record["backend"] if passed and faster else "openvino")
    (copy / record["file"]).unlink()  # a record without its file never sends auto to a missing artifact
    assert default_backend(copy, "cpu") == "openvino"


def test_export_cli_needs_data_for_int8_static(tiny_checkpoint, tmp_path):
    from models.runtime.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["export", str(tiny_checkpoint), "--out", str(tmp_path / "e"), "--int8-static"])
    with pytest.raises(ValueError, match="--data"):
        args.run(args)
    assert not (tmp_path / "e").exists()


def test_quantize_cli_gates_an_existing_export(tiny_checkpoint, demo, tmp_path, capsys):
    from models.commands import main

    exp = export_tiny(tiny_checkpoint, tmp_path / "exp")
    assert main(["quantize", str(exp), "--data", str(demo / "manifest.csv"), "--calib", "8"]) == 0
    saved = json.loads((exp / METADATA).read_text())["int8_static"]
    assert saved["calibration_images"] == 8 and set(saved["candidates"]) == set(INT8_BACKENDS)
    out = capsys.readouterr().out
    assert all(f"int8 static {name} " in out for name in INT8_BACKENDS)  # each candidate's figures, printed
    assert ("offered by auto" in out) == (saved["passed"] and saved["faster"])
