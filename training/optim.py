"""Optimizer pieces: parameter groups, AdamW/SGD, warmup + cosine schedule, EMA weights.

Weight decay is skipped for norms, biases and embeddings (decaying a LayerNorm gain or a
position embedding toward zero only hurts). For ViTs, `layer_decay` scales each block's
learning rate by decay**(depth - layer), so pretrained early layers move less than the
new head (BEiT-style layer-wise LR decay, grouped by timm's param_groups_layer_decay).
"""

from __future__ import annotations

import math

import torch


def no_decay_names(model: torch.nn.Module) -> set[str]:
    """Parameter names the model itself marks as exempt (pos_embed, cls_token, ...)."""
    fn = getattr(model, "no_weight_decay", None)
    return set(fn()) if callable(fn) else set()


def param_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """Trainable parameters in groups, each with its own `weight_decay` and `lr_scale`."""
    skip = no_decay_names(model)
    if layer_decay is not None and layer_decay < 1.0:
        from timm.optim import param_groups_layer_decay

        return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim <= 1 or name.endswith(".bias") or name in skip
        (no_decay if exempt else decay).append(p)
    groups = [dict(params=decay, weight_decay=weight_decay, lr_scale=1.0), dict(params=no_decay, weight_decay=0.0, lr_scale=1.0)]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9,
                    layer_decay: float | None = None) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay, layer_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for g in groups:
        # The schedule multiplies each group's own base lr, so the layer scale lives in it.
        g["lr"] = lr * g.get("lr_scale", 1.0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adamw' or 'sgd'")


class WarmupCosine:
    """LR multiplier: linear warmup over `warmup` steps, then cosine down to `min_ratio`.

    A class rather than a lambda so LambdaLR can save it in its state_dict.
    """

    def __init__(self, warmup: int, total: int, min_ratio: float = 0.01):
        self.warmup, self.total, self.min_ratio = warmup, max(total, 1), min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total, min_ratio))


class EMA:
    """Exponential moving average of a model's floating-point state; integer buffers are copied."""

    def __init__(self, model: torch.nn.Module, decay: float):
        import copy

        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for ema_v, v in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if ema_v.dtype.is_floating_point:
                ema_v.lerp_(v.detach(), 1 - self.decay)
            else:
                ema_v.copy_(v)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
