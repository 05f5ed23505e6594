"""Low-rank adaptation (LoRA, Hu et al. 2021) of a timm ViT's attention, and its merge for serving.

    add_lora(vit, blocks=(8, 9, 10, 11), rank=8, alpha=8)   # qkv and proj of those blocks adapt
    merge_lora(model)                                        # plain nn.Linear again, same outputs

Each adapted linear map computes W x + (alpha / rank) * B A x with W frozen, A (rank x in) random
and B (out x rank) zero, so training starts exactly at the pretrained backbone and weight decay on
A and B pulls the model back toward it. Only A and B (a few hundred KB) are stored with the head.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TARGETS = ("attn.qkv", "attn.proj")
LORA_KEY = ".lora_"


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank {rank} must be >= 1")
        self.base, self.scale = base, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t().to(x.dtype)) @ self.lora_b.t().to(x.dtype) * self.scale

    def merged(self) -> nn.Linear:
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * self.lora_b @ self.lora_a)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out.to(self.base.weight.device)


def _parent(root: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *path, name = dotted.split(".")
    for part in path:
        root = getattr(root, part)
    return root, name


def add_lora(vit: nn.Module, blocks: tuple[int, ...], rank: int, alpha: float) -> list[nn.Parameter]:
    """Wrap TARGETS of `vit.blocks[i]` for i in blocks; returns the new trainable parameters."""
    params = []
    for i in blocks:
        for target in TARGETS:
            parent, name = _parent(vit.blocks[i], target)
            layer = LoRALinear(getattr(parent, name), rank, alpha)
            setattr(parent, name, layer)
            params += [layer.lora_a, layer.lora_b]
    return params


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by the equivalent nn.Linear: no extra matmuls when serving/exporting."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent, attr = _parent(model, name)
            setattr(parent, attr, module.merged())
    return model
