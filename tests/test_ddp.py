"""DistributedDataParallel under a real torchrun: 2 CPU processes with gloo on demo data.

Each launch is a real `python -m torch.distributed.run --nproc_per_node 2 -m training ...`
subprocess on a free loopback port. The comparisons use SGD without augmentation: the
2-process gradient is the mean of two half-batch means, equal to the 1-process one up to
float rounding, and SGD keeps that rounding small (Adam's first step, lr * g / |g|, would
turn it into sign flips on near-zero gradients).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from models.core.checkpoint import load_model_dir
from models.core.config import DetectorConfig
from tests.conftest import TINY_VIT
from training.loader import RankBatches, epoch_batches, per_rank_batch
from training.train import train
from training.train_config import TrainConfig

BASE = dict(model="vit_tiny_patch16_224", model_kwargs=dict(TINY_VIT), img_size=32, epochs=2, batch_size=8,
            optimizer="sgd", lr=0.05, jpeg_prob=0.0, blur_prob=0.0, hflip=False, device="cpu", progress=False,
            save_every=1_000_000, seed=3)


def cfg(data, out, **over) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), **{**BASE, **over})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_args(c: TrainConfig) -> list[str]:
    args = ["--data", c.data, "--out", c.out, "--model", c.model, "--model-kwargs", json.dumps(c.model_kwargs),
            "--img-size", str(c.img_size), "--epochs", str(c.epochs), "--batch-size", str(c.batch_size),
            "--optimizer", c.optimizer, "--lr", str(c.lr), "--jpeg-prob", "0", "--blur-prob", "0", "--no-hflip",
            "--device", "cpu", "--no-progress", "--seed", str(c.seed), "--save-every", str(c.save_every or 1_000_000)]
    if c.max_steps is not None:
        args += ["--max-steps", str(c.max_steps)]
    if c.resume:
        args.append("--resume")
    return args


def torchrun(nproc: int, c: TrainConfig) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "training", *cli_args(c)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def assert_close_weights(a, b, atol=1e-5):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=1e-4, msg=k)


@pytest.fixture(scope="module")
def one_step_runs(demo, tmp_path_factory):
    """The same 1-step run on 2 processes (torchrun) and on 1 (in process)."""
    root = tmp_path_factory.mktemp("runs")
    two = cfg(demo, root / "two", max_steps=1)
    proc = torchrun(2, two)
    train(cfg(demo, root / "one", max_steps=1))
    return root / "one", root / "two", proc


def _layout(run) -> dict:
    return {p.relative_to(run).as_posix() for p in run.rglob("*") if not p.name.startswith(".")}


def test_two_process_run_has_the_single_process_layout(one_step_runs):
    one, two, proc = one_step_runs
    assert _layout(two) == _layout(one) == {
        "best", "last", "metrics.jsonl", "train_config.json",
        *(f"{d}/{f}" for d in ("best", "last") for f in ("model.safetensors", "detector.json", "train_state.pt")),
    }
    model, det = load_model_dir(two / "best")
    assert det.preprocess.img_size == 32 and det.version and det.temperature != 1.0
    assert set(load_file(str(two / "last" / "model.safetensors"))) == set(model.state_dict())
    s1 = torch.load(one / "last" / "train_state.pt", weights_only=True)
    s2 = torch.load(two / "last" / "train_state.pt", weights_only=True)
    assert s1.keys() == s2.keys() and s1["progress"] == s2["progress"]  # the global data position
    assert DetectorConfig.load(two / "best" / "detector.json").data_fingerprint == \
        DetectorConfig.load(one / "best" / "detector.json").data_fingerprint
    lines = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1, "only rank 0 writes metrics.jsonl"
    assert lines[0]["processes"] == 2
    assert lines[0]["data_wait_s"] < lines[0]["seconds"]  # waiting longer than the epoch: an accounting bug
    assert proc.stdout.count("trained 1 steps") == 1, "only rank 0 reports"


def test_two_processes_take_the_same_first_step_as_one(one_step_runs):
    one, two, _ = one_step_runs
    head = load_file(str(two / "last" / "model.safetensors"))["head.weight"]
    assert head.abs().sum() > 0, "the zero-initialised head must have taken a step"
    assert_close_weights(one / "last", two / "last")
    # The training loss is reduced over both ranks: the mean over the same 8 images.
    l1 = json.loads((one / "metrics.jsonl").read_text())
    l2 = json.loads((two / "metrics.jsonl").read_text())
    assert l2["train_loss"] == pytest.approx(l1["train_loss"], rel=1e-5)
    assert l2["val_auc"] == pytest.approx(l1["val_auc"], abs=1e-6)


def run_on(nproc: int, c: TrainConfig) -> None:
    torchrun(nproc, c) if nproc > 1 else train(c)


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_resume_on_a_different_number_of_processes(demo, tmp_path, first, then):
    # 60 demo images -> 5 batches of 8 per epoch; stop mid-epoch 1, finish on the other count.
    run_on(first, cfg(demo, tmp_path / "cut", max_steps=3))
    state = torch.load(tmp_path / "cut" / "last" / "train_state.pt", weights_only=True)
    assert state["progress"]["step"] == 3 and state["progress"]["batch"] == 3
    run_on(then, cfg(demo, tmp_path / "cut", resume=True))
    full = train(cfg(demo, tmp_path / "full"))
    assert full.steps == 10
    final = torch.load(tmp_path / "cut" / "last" / "train_state.pt", weights_only=True)["progress"]
    assert (final["step"], final["epoch"]) == (10, 2)
    assert_close_weights(tmp_path / "full" / "last", tmp_path / "cut" / "last")
    load_model_dir(tmp_path / "cut" / "best")


def test_rank_shards_cover_each_global_batch_once():
    shards = [RankBatches(21, 8, seed=5, rank=r, world_size=2) for r in range(2)]
    for s in shards:
        s.set_epoch(3, start=1)
    expected = epoch_batches(21, 8, seed=5, epoch=3)[1:]
    assert [a + b for a, b in zip(*(list(s) for s in shards), strict=True)] == expected
    assert all(len(b) == 4 for s in shards for b in s)


def test_global_batch_must_divide_over_processes():
    assert per_rank_batch(16, 2) == 8
    with pytest.raises(ValueError, match="--batch-size 10 is the global batch .* 4 processes.*e.g. 12"):
        per_rank_batch(10, 4)
