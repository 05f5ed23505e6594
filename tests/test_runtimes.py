"""Every registered runtime scores real image files like the eager model; broken artifacts fail at load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from models.core.preprocess import calibrated_probability, decode_image
from models.runtime.detector import BACKENDS, default_backend
from models.runtime.loader import load_detector
from models.runtime.metadata import METADATA
from models.runtime.parity import prob_bound
from tests.export_helpers import copy_with_config, export_tiny, image_files


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, image_folder, tmp_path_factory):
    from models.core.config import DetectorConfig
    from models.runtime.metadata import INT8_OPENVINO_FILE, INT8_STATIC_FILE
    from models.runtime.quantize import _views, quantize_openvino, quantize_static

    exp = export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("exp") / "exp", int8=True, fp16=True)
    # the static int8 files without their gate record, so `auto` keeps ignoring it here (tests/test_quantize.py)
    calib = _views([str(p) for p in image_files(image_folder)], DetectorConfig.load(exp / "detector.json"))
    quantize_static(exp / "model.onnx", exp / INT8_STATIC_FILE, calib)
    quantize_openvino(exp / "model.onnx", exp / INT8_OPENVINO_FILE, calib)
    return exp


@pytest.fixture(scope="module")
def images(image_folder):
    return [decode_image(p)[0] for p in image_files(image_folder)]


@pytest.fixture(scope="module")
def eager_probs(tiny_checkpoint, images):
    return load_detector(tiny_checkpoint, backend="eager", device="cpu").probabilities(images)


# Every registered backend runs on CPU here (onnx-fp16 too: ORT's CPU kernels accept fp16).
@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_backend_matches_eager(name, exported, tiny_checkpoint, images, eager_probs):
    source = tiny_checkpoint if name == "eager" else exported
    det = load_detector(source, backend=name, device="cpu")
    assert det.info["backend"] == name
    probs = det.probabilities(images)
    assert probs.shape == (len(images),)
    # fp32 runtimes: 1e-4; int8/fp16/bf16: the looser bounds documented in models/runtime/parity.py
    np.testing.assert_allclose(probs, eager_probs, rtol=0, atol=prob_bound(name))


def test_tiles_run_through_onnx(tiny_checkpoint, tmp_path, images):
    tiled = copy_with_config(tiny_checkpoint, tmp_path / "tiled", views="tiles", max_tiles=9)
    exp = export_tiny(tiled, tmp_path / "exp")
    onnx_det = load_detector(exp, backend="onnx", device="cpu")
    eager = load_detector(tiled, backend="eager", device="cpu")
    big = [img.resize((80, 70)) for img in images[:3]]  # 3 x 3 tiles each at 32 px
    np.testing.assert_allclose(onnx_det.logits(big), eager.logits(big), rtol=0, atol=1e-4)
    assert np.ptp(onnx_det.logits(big)) > 0  # distinct images, distinct scores


@pytest.mark.parametrize("name,filename", [("onnx", "model.onnx"), ("openvino", "model.onnx"),
                                           ("torchscript", "model.torchscript.pt")])
def test_truncated_artifact_fails_at_load(name, filename, exported, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    data = (broken / filename).read_bytes()
    (broken / filename).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_detector(broken, backend=name, device="cpu")


@pytest.mark.parametrize("missing", [METADATA, "detector.json"])
def test_incomplete_export_fails_at_load(missing, exported, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / missing).unlink()
    with pytest.raises(FileNotFoundError, match=f"{missing}.*re-run `fakelens export`"):
        load_detector(broken, backend="onnx", device="cpu")


@pytest.mark.parametrize("name", ["onnx", "openvino", "torchscript"])
def test_input_size_mismatch_fails_at_load(name, exported, tmp_path):
    wrong = copy_with_config(exported, tmp_path / "wrong", img_size=48)
    with pytest.raises(ValueError, match="img_size"):
        load_detector(wrong, backend=name, device="cpu")


def test_auto_picks_openvino_only_when_its_parity_passed(exported, tiny_checkpoint, tmp_path):
    meta = json.loads((exported / METADATA).read_text())
    assert meta["parity"]["openvino"]["passed"] is True
    assert load_detector(exported, device="cpu").backend.name == "openvino"
    failed = tmp_path / "ov_failed"
    shutil.copytree(exported, failed)
    meta["parity"]["openvino"]["passed"] = False
    (failed / METADATA).write_text(json.dumps(meta))
    assert default_backend(failed, "cpu") == "onnx"
    assert default_backend(tiny_checkpoint, "cpu") == "eager"


def test_missing_variant_and_unknown_backend_are_explained(tiny_checkpoint, exported, tmp_path):
    plain = export_tiny(tiny_checkpoint, tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="--int8"):
        load_detector(plain, backend="onnx-int8", device="cpu")
    with pytest.raises(FileNotFoundError, match="fakelens export"):
        load_detector(tiny_checkpoint, backend="onnx", device="cpu")
    with pytest.raises(ValueError, match="choose one of"):
        load_detector(exported, backend="tensorrt", device="cpu")
    with pytest.raises(ValueError, match="export folder.*'onnx'"):
        load_detector(exported, backend="eager", device="cpu")


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_runtime_scores_equal_fakelens_evaluate(name, exported, tiny_checkpoint, image_folder):
    """What `fakelens evaluate` scores (collect_logits on the checkpoint) is what every runtime serves."""
    evaluate = pytest.importorskip("training.evaluate")
    from models.core.dataset import Sample

    samples = [Sample(str(p), i % 2) for i, p in enumerate(image_files(image_folder))]
    reference, _, _, _ = evaluate.collect_logits(load_detector(tiny_checkpoint, backend="eager", device="cpu"),
                                                 samples, batch_size=3)
    source = tiny_checkpoint if name == "eager" else exported
    det = load_detector(source, backend=name, device="cpu")
    logits, labels, kept, errors = evaluate.collect_logits(det, samples, batch_size=3)
    assert not errors and len(kept) == len(samples)
    np.testing.assert_allclose(calibrated_probability(logits, det.config.temperature),
                               calibrated_probability(reference, det.config.temperature),
                               rtol=0, atol=prob_bound(name))


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_backend_spec_is_consistent(name):
    """Each BackendSpec row is all export, parity and `auto` read: an option export cannot honour,
    or an auto rank on a device the backend cannot use, would silently never take effect."""
    from dataclasses import fields

    from models.runtime.export import DERIVED_EXPORTERS, ExportOptions

    spec = BACKENDS[name]
    if spec.export_option is not None:
        assert spec.export_option in {f.name for f in fields(ExportOptions)}
        assert spec.export_option in DERIVED_EXPORTERS
    assert set(spec.auto_rank) <= set(spec.devices)
    assert spec.precision == "fp32" or spec.prob_bound is not None


DROP_ON_ANOTHER_THREAD = """
import gc, os, signal, sys, threading
import numpy as np
from models.runtime.loader import load_detector
holder = {"det": load_detector(sys.argv[1], backend="openvino", device="cpu")}
holder["det"].probabilities_from_views([np.zeros((1, 32, 32, 3), np.uint8)])
worker = threading.Thread(target=lambda: (holder.clear(), gc.collect()))  # the garbage collector's thread, say
worker.start()
worker.join()
handled = []
signal.signal(signal.SIGUSR1, lambda *_: handled.append(True))  # Python handlers run on the signal stack
os.kill(os.getpid(), signal.SIGUSR1)
print("handled" if handled else "not handled")
"""


def test_openvino_model_released_on_another_thread_leaves_signals_working(exported):
    """OpenVINO gives the compiling thread a signal stack and freed it with the last Core: when that
    Core was dropped on another thread, the next signal the main thread handled was a SIGSEGV with no
    traceback (the suite's process died so). The backends share one Core that is never released."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", DROP_ON_ANOTHER_THREAD, str(exported)], cwd=repo,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.stdout.strip() == "handled"
