"""The speed knobs of `fakelens train` on CPU: they must change how fast a run goes, not what it learns.

channels-last, gradient checkpointing and persistent loader workers are exercised on a
tiny BatchNorm CNN (channels-last is on by default for such models); torch.compile
is only checked for wrapping (compiling even a tiny model costs tens of seconds on 2 cores;
bench/train_throughput.py measures it).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from models.core.checkpoint import load_model_dir
from models.core.network import build_network
from tests.conftest import TINY_VIT, tiny_config
from training.model_prep import (
    enable_grad_checkpointing,
    is_convolutional,
    unwrap,
    use_channels_last,
    wrap_model,
)
from training.train import train
from training.train_config import TrainConfig


def cnn(data, out, **over) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="test_resnet", img_size=32, epochs=2, batch_size=8,
                optimizer="sgd", lr=0.02, device="cpu", progress=False, save_every=None)
    return TrainConfig(**{**base, **over})


def _assert_close(a, b, atol=1e-4):
    wa, wb = load_file(str(a / "last" / "model.safetensors")), load_file(str(b / "last" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=1e-3, msg=k)


def test_channels_last_and_persistent_workers_train_the_same_model(demo, tmp_path):
    plain = train(cnn(demo, tmp_path / "plain"))
    fast = train(cnn(demo, tmp_path / "fast", channels_last=True, workers=1, prefetch_factor=3))
    assert fast.steps == plain.steps == 10
    _assert_close(tmp_path / "plain", tmp_path / "fast")
    model, _ = load_model_dir(tmp_path / "fast" / "best")  # channels-last weights save as plain tensors
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1)
    lines = [json.loads(x) for x in (tmp_path / "fast" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]  # the persistent workers served both epochs
    for m in lines:  # one process: the fraction is this epoch's wait over its wall time
        assert m["data_wait_fraction"] == pytest.approx(m["data_wait_s"] / m["seconds"], rel=1e-6)
        assert m["data_wait_s"] < m["seconds"]


def test_grad_checkpointing_trains_the_same_vit(demo, tmp_path):
    # A ViT (LayerNorm): recomputing the blocks in backward gives the same gradients.
    # (A BatchNorm CNN would update its running statistics twice per step.)
    vit = dict(model="vit_tiny_patch16_224", model_kwargs=dict(TINY_VIT), epochs=1, max_steps=3)
    train(cnn(demo, tmp_path / "plain", **vit))
    train(cnn(demo, tmp_path / "ckpt", grad_checkpointing=True, **vit))
    _assert_close(tmp_path / "plain", tmp_path / "ckpt", atol=1e-5)


def test_channels_last_defaults_to_conv_models():
    vit, resnet = build_network(tiny_config()), build_network(tiny_config().__class__(arch="test_resnet"))
    assert is_convolutional(resnet) and not is_convolutional(vit)
    c = TrainConfig(data="d", out="o")
    assert use_channels_last(c, resnet, "cuda") and not use_channels_last(c, vit, "cuda")
    assert use_channels_last(c, resnet, "cpu") and not use_channels_last(c, vit, "cpu")
    assert use_channels_last(TrainConfig(data="d", out="o", channels_last=True), vit, "cpu")


def test_grad_checkpointing_needs_model_support():
    vit = build_network(tiny_config())
    enable_grad_checkpointing(vit, "vit_tiny_patch16_224")
    assert vit.grad_checkpointing
    with pytest.raises(ValueError, match="'plain' does not support it; drop the flag"):
        enable_grad_checkpointing(torch.nn.Linear(2, 2), "plain")


def test_compile_wraps_lazily_and_unwraps_to_the_timm_module(tmp_path):
    vit = build_network(tiny_config())
    compiled = wrap_model(vit, TrainConfig(data="d", out="o", compile=True, model_kwargs=dict(TINY_VIT)), "cpu")
    assert compiled is not vit and unwrap(compiled) is vit
    assert wrap_model(vit, TrainConfig(data="d", out="o"), "cpu") is vit  # one process: no DDP
