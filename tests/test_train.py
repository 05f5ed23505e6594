"""`fakelens train` end to end on tiny models and demo data: learning, outputs, bad data."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.commands import main
from models.core.checkpoint import load_model_dir
from models.core.config import DetectorConfig
from models.core.dataset import list_samples
from models.runtime.loader import load_detector
from tests.conftest import TINY_VIT, tiny_config
from training.demo_data import write_demo_dataset
from training.train import train
from training.train_config import TrainConfig


def tiny(data, out, **over) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="vit_tiny_patch16_224", model_kwargs=dict(TINY_VIT), img_size=32,
                epochs=1, batch_size=8, lr=1e-3, device="cpu", progress=False, save_every=None)
    return TrainConfig(**{**base, **over})


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_goes_down_and_run_folder_is_complete(demo, tmp_path):
    # A small BatchNorm CNN picks the pixel-level fingerprint up within a few epochs.
    cfg = tiny(demo, tmp_path / "run", model="test_resnet", model_kwargs={}, epochs=5, lr=3e-3,
               jpeg_prob=0.0, blur_prob=0.0)
    result = train(cfg)
    lines = _metrics(tmp_path / "run")
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4, 5]
    assert {"step", "train_loss", "val_auc", "val_loss", "lr", "images_per_s", "seconds"} <= set(lines[0])
    assert lines[0]["train_loss"] > 0.6  # the zero-initialised head starts at ln 2
    assert lines[-1]["train_loss"] < 0.8 * lines[0]["train_loss"]
    assert max(m["val_auc"] for m in lines) > 0.6  # 9 val images: a coarse check
    run = tmp_path / "run"
    assert TrainConfig.load(run / "train_config.json") == cfg
    for name in ("best", "last"):
        assert {p.name for p in (run / name).iterdir()} == {"model.safetensors", "detector.json", "train_state.pt"}
    best = DetectorConfig.load(run / "best" / "detector.json")
    assert best.preprocess.img_size == 32 and best.preprocess.crop_mode == "crop"
    assert best.temperature != 1.0 and 0 < best.threshold < 1 and best.version and best.data_fingerprint
    assert best.metrics["val_auc"] == pytest.approx(result.best_auc) == pytest.approx(max(m["val_auc"] for m in lines))
    best_line = next(m for m in lines if m["val_auc"] == max(x["val_auc"] for x in lines))
    assert (best.metrics["epoch"], best.metrics["step"]) == (best_line["epoch"], best_line["step"])
    # The calibrated folder loads in the runtime the service uses.
    det = load_detector(run, backend="eager", device="cpu")
    assert det.config.version == best.version


def test_cli_train_with_pretrained_file_and_frozen_backbone(demo, tmp_path, capsys):
    torch.manual_seed(5)
    source = load_model_dir.__globals__["build_network"](tiny_config())
    weights = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    run = tmp_path / "run"
    argv = ["train", "--data", str(demo / "manifest.csv"), "--out", str(run), "--model", "vit_tiny_patch16_224",
            "--model-kwargs", json.dumps(TINY_VIT), "--img-size", "32", "--epochs", "1", "--batch-size", "8",
            "--pretrained-file", str(weights), "--freeze-backbone", "--max-steps", "3", "--device", "cpu",
            "--no-progress", "--ema-decay", "0.9"]
    assert main(argv) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    start, last = load_file(str(weights)), load_file(str(run / "last" / "model.safetensors"))
    frozen = [k for k in start if not k.startswith("head.")]
    assert all(torch.equal(start[k], last[k]) for k in frozen), "only the head may train"
    assert not torch.equal(start["head.weight"], last["head.weight"])
    # A max-steps stop still leaves a usable, calibrated best/ and a partial metrics line.
    assert DetectorConfig.load(run / "best" / "detector.json").version
    assert _metrics(run)[0]["partial_epoch"] is True
    # The same --out again without --resume is refused.
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err


def test_corrupt_files_are_skipped_and_reported(demo, tmp_path, caplog):
    data = tmp_path / "data"
    write_demo_dataset(data, n=60, seed=0)
    train_paths = [s.path for s in list_samples(data, "train")]
    val_paths = [s.path for s in list_samples(data, "val")]
    with open(train_paths[0], "wb") as f:
        f.write(b"this is not a png")
    with open(val_paths[0], "r+b") as f:
        f.truncate(100)
    with caplog.at_level(logging.WARNING, logger="fakelens.train"):
        result = train(tiny(data, tmp_path / "run", max_steps=6))
    assert set(result.bad_files) == {train_paths[0], val_paths[0]}
    assert train_paths[0] in caplog.text and val_paths[0] in caplog.text
    assert _metrics(tmp_path / "run")[-1]["skipped_files"] == 2


def test_empty_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "data" / "real").mkdir(parents=True)
    (tmp_path / "data" / "fake").mkdir()
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 2
    assert "contains no images" in capsys.readouterr().err


def test_one_class_only_is_a_clear_error(tmp_path):
    write_demo_dataset(tmp_path / "data", n=40)
    for p in (tmp_path / "data" / "fake").rglob("*.png"):
        p.unlink()
    with pytest.raises(ValueError, match="train split .* holds only real images"):
        train(tiny(tmp_path / "data", tmp_path / "run"))


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="--optimizer 'adam'"):
        tiny(tmp_path, tmp_path / "run", optimizer="adam")
    with pytest.raises(ValueError, match="either --pretrained or --pretrained-file"):
        tiny(tmp_path, tmp_path / "run", pretrained=True, pretrained_file="x.pth")


def test_cli_defaults_are_the_configs_defaults():
    import argparse

    from training.cli import register, train_config

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--data", "a", "--data", "b", "--out", "o"])
    assert train_config(args) == TrainConfig(data="a,b", out="o")
