"""Optimizer construction: weight-decay groups, layer-wise LR decay, AdamW step, schedule."""

from __future__ import annotations

import math

import pytest
import torch

from models.core.network import build_network
from tests.conftest import tiny_config
from training.model_prep import amp_settings
from training.optim import EMA, WarmupCosine, build_optimizer, build_scheduler


def _tiny_vit():
    torch.manual_seed(0)
    return build_network(tiny_config())


def _group_of(opt, model):
    ids = {id(p): g for g in opt.param_groups for p in g["params"]}
    return {name: ids[id(p)] for name, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("layer_decay", [None, 0.5])
def test_no_weight_decay_on_norms_biases_and_embeddings(layer_decay):
    model = _tiny_vit()
    opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=layer_decay)
    groups = _group_of(opt, model)
    assert set(groups) == {n for n, _ in model.named_parameters()}
    for name in ("pos_embed", "cls_token", "norm.weight", "blocks.0.norm1.weight", "blocks.1.attn.qkv.bias", "head.bias"):
        assert groups[name]["weight_decay"] == 0.0, name
    for name in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "head.weight"):
        assert groups[name]["weight_decay"] == 0.05, name


def test_layer_decay_scales_lr_by_depth():
    model = _tiny_vit()
    opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    lr = {name: g["lr"] for name, g in _group_of(opt, model).items()}
    # depth 2 -> layers: embeddings 0, blocks 1..2, head 3
    assert lr["head.weight"] == pytest.approx(1e-3)
    assert lr["blocks.1.mlp.fc1.weight"] == pytest.approx(1e-3 * 0.5)
    assert lr["blocks.0.mlp.fc1.weight"] == pytest.approx(1e-3 * 0.25)
    assert lr["patch_embed.proj.weight"] == pytest.approx(1e-3 * 0.125)


def test_adamw_step_matches_hand_written_update():
    model = _tiny_vit()
    opt = build_optimizer(model, "adamw", lr=1e-2, weight_decay=0.1, layer_decay=0.75)
    params = [p for g in opt.param_groups for p in g["params"]]
    gen = torch.Generator().manual_seed(1)
    before = {id(p): p.detach().clone() for p in params}
    expected = {}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.randn(p.shape, generator=gen)
            lr, wd = g["lr"], g["weight_decay"]
            m = (1 - beta1) * p.grad
            v = (1 - beta2) * p.grad**2
            m_hat, v_hat = m / (1 - beta1), v / (1 - beta2)
            decayed = before[id(p)] * (1 - lr * wd)  # decoupled weight decay
            expected[id(p)] = decayed - lr * m_hat / (v_hat.sqrt() + eps)
    opt.step()
    moved = 0
    for p in params:
        torch.testing.assert_close(p.detach(), expected[id(p)], rtol=1e-5, atol=1e-7)
        moved += int(not torch.equal(p.detach(), before[id(p)]))
    assert moved == len(params)


def test_sgd_uses_momentum():
    opt = build_optimizer(_tiny_vit(), "sgd", lr=0.1, weight_decay=1e-4, momentum=0.8)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.8


def test_warmup_then_cosine_to_floor():
    model = torch.nn.Linear(2, 1)
    opt = build_optimizer(model, "adamw", lr=1.0, weight_decay=0.0)
    sched = build_scheduler(opt, warmup=4, total=20, min_ratio=0.1)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == sorted(lrs[:4]) and lrs[0] < 0.5
    assert lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    assert WarmupCosine(4, 20, 0.1)(20) == pytest.approx(0.1)
    assert WarmupCosine(0, 10, 0.0)(5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_ema_tracks_weights():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, start + 1.0)


def test_fp16_on_cpu_is_a_clear_error():
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        amp_settings("fp16", "cpu")
    assert amp_settings("bf16", "cpu") == (torch.bfloat16, False)
    assert amp_settings("auto", "cpu") == (None, False)
