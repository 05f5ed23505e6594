"""Resume: an interrupted-then-resumed run ends with exactly the weights of an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_VIT
from training.train import train
from training.train_config import TrainConfig


def cfg(data, out, **over) -> TrainConfig:
    # drop_path makes the model itself consume the torch RNG, so its state must be restored too.
    base = dict(data=str(data), out=str(out), model="vit_tiny_patch16_224",
                model_kwargs={**TINY_VIT, "drop_path_rate": 0.1}, img_size=32, epochs=2, batch_size=8,
                lr=1e-3, device="cpu", progress=False, save_every=2, jpeg_prob=0.5, blur_prob=0.5, seed=7)
    return TrainConfig(**{**base, **over})


def _assert_same_weights(a, b):
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize(
    "extra,stop_at",
    [
        (dict(), 3),  # mid-epoch 1 (5 batches per epoch)
        (dict(accum_steps=2, ema_decay=0.8, optimizer="sgd"), 4),  # mid-epoch 2 (3 steps per epoch)
    ],
)
def test_resume_equals_uninterrupted(demo, tmp_path, extra, stop_at):
    full = train(cfg(demo, tmp_path / "full", **extra))
    interrupted = train(cfg(demo, tmp_path / "cut", max_steps=stop_at, **extra))
    assert interrupted.steps == stop_at < full.steps
    state = torch.load(tmp_path / "cut" / "last" / "train_state.pt", weights_only=True)
    assert 0 < state["progress"]["batch"], "the interruption must fall mid-epoch"
    resumed = train(cfg(demo, tmp_path / "cut", resume=True, **extra))
    assert resumed.steps == full.steps
    _assert_same_weights(tmp_path / "full" / "last" / "model.safetensors", tmp_path / "cut" / "last" / "model.safetensors")
    _assert_same_weights(tmp_path / "full" / "best" / "model.safetensors", tmp_path / "cut" / "best" / "model.safetensors")
    full_lines = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    cut_lines = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert full_lines[-1]["val_auc"] == cut_lines[-1]["val_auc"]


def test_resume_refuses_changed_settings(demo, tmp_path):
    train(cfg(demo, tmp_path / "run", max_steps=1, epochs=1))
    with pytest.raises(ValueError, match="lr: 0.001 -> 0.01"):
        train(cfg(demo, tmp_path / "run", max_steps=2, epochs=1, resume=True, lr=1e-2))


def test_resume_after_kill_9_mid_run(demo, tmp_path):
    """A real SIGKILL while the run writes checkpoints every step, then --resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from training.checkpointing import load_checkpoint

    config = cfg(demo, tmp_path / "killed", epochs=4, save_every=1, model_kwargs=dict(TINY_VIT))
    argv = [sys.executable, "-m", "training", "--data", config.data, "--out", config.out, "--model", config.model,
            "--model-kwargs", json.dumps(config.model_kwargs), "--img-size", "32", "--epochs", "4",
            "--batch-size", "8", "--lr", "1e-3", "--device", "cpu", "--no-progress", "--save-every", "1",
            "--jpeg-prob", "0.5", "--blur-prob", "0.5", "--seed", "7"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "killed" / "last").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    _, _, state = load_checkpoint(tmp_path / "killed")
    assert state["progress"]["step"] < 20, "the kill must land before the run finished"
    assert TrainConfig.load(tmp_path / "killed" / "train_config.json") == config
    train(dataclasses.replace(config, resume=True))
    train(dataclasses.replace(config, out=str(tmp_path / "full")))
    _assert_same_weights(tmp_path / "full" / "last" / "model.safetensors", tmp_path / "killed" / "last" / "model.safetensors")
