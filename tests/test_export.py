"""`fakelens export`: the files, the metadata inside and beside them, parity rejection, atomicity."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import models.runtime.export as export_mod
from models.commands import main
from models.core.preprocess import decode_image
from models.runtime.export import ExportOptions, export_model
from models.runtime.loader import load_detector
from models.runtime.parity import ParityError
from tests.export_helpers import export_tiny, image_files


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    return export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("exp") / "exp", int8=True)


def test_export_writes_files_and_metadata(exported, tiny_checkpoint):
    names = {p.name for p in exported.iterdir()}
    assert {"model.onnx", "model.torchscript.pt", "model.int8.onnx", "metadata.json", "detector.json"} <= names
    assert not list(exported.parent.glob(".exp.tmp-*"))  # the staging folder is gone
    meta = json.loads((exported / "metadata.json").read_text())
    src = json.loads((tiny_checkpoint / "detector.json").read_text())
    assert meta["arch"] == src["arch"] and meta["model_kwargs"] == src["model_kwargs"]
    assert meta["preprocess"] == src["preprocess"] and meta["temperature"] == 1.5
    assert meta["opset"] >= 17 and meta["exporter"] == "torchscript" and meta["version"] == "test"
    assert {"torchscript", "onnx", "onnx-int8", "openvino"} <= set(meta["parity"])
    assert all(meta["parity"][n]["passed"] for n in ("torchscript", "onnx", "onnx-int8"))
    assert meta["parity"]["onnx"]["max_abs_logit_diff"] <= 1e-4
    model = onnx.load(str(exported / "model.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    extra = {"metadata.json": ""}
    torch.jit.load(str(exported / "model.torchscript.pt"), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["parity"] == meta["parity"]


def test_plain_onnxruntime_runs_the_file_from_its_own_metadata(exported, image_folder):
    """No project code: read preprocessing/temperature from the ONNX file, score, compare."""
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    pre, temperature = json.loads(meta["preprocess"]), float(meta["temperature"])
    assert float(meta["threshold"]) == 0.5 and pre["crop_mode"] == "crop"
    s = pre["img_size"]
    paths = [p for p in image_files(image_folder) if p.suffix == ".png"][:3]  # 40x48: no padding
    batch = []
    for p in paths:  # the images are larger than s on both sides: plain centre crop
        arr = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0
        top, left = (arr.shape[0] - s) // 2, (arr.shape[1] - s) // 2
        crop = (arr[top : top + s, left : left + s] - pre["mean"]) / pre["std"]
        batch.append(crop.transpose(2, 0, 1))
    logits = session.run(None, {session.get_inputs()[0].name: np.stack(batch).astype(np.float32)})[0]
    probs = 1 / (1 + np.exp(-logits.reshape(-1) / temperature))
    ours = load_detector(exported, backend="onnx", device="cpu").probabilities([decode_image(p)[0] for p in paths])
    np.testing.assert_allclose(probs, ours, rtol=0, atol=1e-6)


def _add_offset_to_output(real_export_onnx):
    """Wrap the ONNX exporter so the written graph adds 0.5 to every logit (a wrong graph)."""

    def corrupt(model, cfg, path, opset):
        exporter = real_export_onnx(model, cfg, path, opset)
        graph_model = onnx.load(str(path))
        graph = graph_model.graph
        last = next(n for n in graph.node if "logits" in n.output)
        last.output[list(last.output).index("logits")] = "logits_raw"
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(0.5, np.float32), "offset"))
        graph.node.append(onnx.helper.make_node("Add", ["logits_raw", "offset"], ["logits"]))
        onnx.save(graph_model, str(path))
        return exporter

    return corrupt


def test_parity_failure_rejects_export_and_keeps_previous(tiny_checkpoint, tmp_path, monkeypatch):
    out = export_tiny(tiny_checkpoint, tmp_path / "exp")
    before = (out / "model.onnx").read_bytes()
    monkeypatch.setattr(export_mod, "export_onnx", _add_offset_to_output(export_mod.export_onnx))
    with pytest.raises(ParityError, match="export rejected: onnx"):
        export_tiny(tiny_checkpoint, out)
    assert (out / "model.onnx").read_bytes() == before  # the previous export is untouched
    with pytest.raises(ParityError):
        export_tiny(tiny_checkpoint, tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # nothing half-written left


def test_export_from_run_folder_uses_best(tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, run / "best")
    shutil.copytree(tiny_checkpoint, run / "last")
    meta = export_model(run, tmp_path / "exp", ExportOptions(version="v2"), log=lambda _: None)
    assert meta["source_checkpoint"].endswith("best") and meta["version"] == "v2"
    assert json.loads((tmp_path / "exp" / "detector.json").read_text())["version"] == "v2"


def test_auc_change_is_measured_on_validation_images(tiny_checkpoint, image_folder, tmp_path):
    from sklearn.metrics import roc_auc_score

    paths = image_files(image_folder)
    val = [(str(p), i % 2) for i, p in enumerate(paths)]
    meta = export_model(tiny_checkpoint, tmp_path / "exp", ExportOptions(int8=True), val=val, log=lambda _: None)
    v = meta["variants"]["onnx-int8"]
    probs = load_detector(tiny_checkpoint, backend="eager", device="cpu").probabilities(
        [decode_image(p)[0] for p, _ in val])
    assert v["val_images"] == len(val)
    assert v["auc_fp32"] == pytest.approx(roc_auc_score([y for _, y in val], probs))
    assert v["auc_change"] == pytest.approx(v["auc"] - v["auc_fp32"])


def test_every_backend_is_validated_and_a_drifting_one_is_not_offered(tiny_checkpoint, image_folder, tmp_path):
    from models.runtime.detector import default_backend
    from models.runtime.metadata import read_metadata, write_metadata

    paths = image_files(image_folder)
    val = [(str(p), i % 2) for i, p in enumerate(paths)]
    meta = export_model(tiny_checkpoint, tmp_path / "exp", val=val, log=lambda _: None)
    validation = meta["validation"]
    assert {"eager", "onnx", "torchscript", "openvino"} <= set(validation)
    real = [p for p, y in val if y == 0]
    probs = load_detector(tiny_checkpoint, backend="eager", device="cpu").probabilities(
        [decode_image(p)[0] for p in real])
    threshold = json.loads((tmp_path / "exp" / "detector.json").read_text())["threshold"]
    assert validation["eager"]["fpr_at_threshold"] == pytest.approx(float((probs >= threshold).mean()))
    assert validation["onnx"]["offered"] and abs(validation["onnx"]["fpr_drift"]) <= 0.01
    # What `auto` picks follows the measurement: mark OpenVINO as drifting and it is passed over.
    assert default_backend(tmp_path / "exp", "cpu") == "openvino"
    stored = read_metadata(tmp_path / "exp")
    stored["validation"]["openvino"]["offered"] = False
    write_metadata(tmp_path / "exp", stored)
    assert default_backend(tmp_path / "exp", "cpu") == "onnx"


def test_cli_refuses_bad_version_and_foreign_out_folder(tiny_checkpoint, tmp_path, capsys):
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "e"), "--no-store", "--version", "V 1"]) == 2
    assert "not a valid model-store version" in capsys.readouterr().err
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["export", str(tiny_checkpoint), "--out", str(foreign), "--no-store"]) == 2
    assert "not an export folder" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"
