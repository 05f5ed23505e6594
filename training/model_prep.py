"""Getting a model ready for the loop: head init, freezing, train/eval modes, devices, AMP,
channels-last, activation checkpointing, and the DDP / torch.compile wrappers around it."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from training import distributed
from training.train_config import TrainConfig


@torch.no_grad()
def zero_head(model: torch.nn.Module) -> None:
    """Start the new 1-logit head at zero: every image starts at p=0.5 (loss ln 2).

    Some timm heads are initialised for 1000 classes of ImageNet (EfficientNet's draws
    uniform(+-1/sqrt(num_classes)) = +-1 for one output), which on pretrained features
    gives logits in the tens and a first loss far above ln 2.
    """
    for p in model.get_classifier().parameters():
        p.zero_()


def freeze_backbone(model: torch.nn.Module) -> None:
    """Linear probe: only the classifier head trains."""
    head = {id(p) for p in model.get_classifier().parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in head)


def set_train_mode(model: torch.nn.Module, frozen_backbone: bool) -> None:
    # A frozen backbone keeps its BatchNorm statistics and dropout off, like at eval time.
    model.train(not frozen_backbone)
    if frozen_backbone:
        unwrap(model).get_classifier().train()


def is_convolutional(model: torch.nn.Module) -> bool:
    """More than a patch-embedding convolution: channels-last memory pays off for such models."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) > 1


def use_channels_last(cfg: TrainConfig, model: torch.nn.Module, device: str) -> bool:
    if cfg.channels_last is not None:
        return cfg.channels_last
    # On for conv nets everywhere: oneDNN's NHWC kernels too made an efficientnet_lite0 train
    # step ~1.6x faster on this CPU (depthwise convolutions are memory-bound in NCHW).
    return is_convolutional(model)


def enable_grad_checkpointing(model: torch.nn.Module, arch: str) -> None:
    """Recompute activations in backward (timm's per-block checkpointing): big ViTs fit larger batches."""
    fn = getattr(model, "set_grad_checkpointing", None)
    if not callable(fn):
        raise ValueError(f"--grad-checkpointing: the timm model {arch!r} does not support it; drop the flag")
    fn(True)


def wrap_model(model: torch.nn.Module, cfg: TrainConfig, device: str) -> torch.nn.Module:
    """DistributedDataParallel under torchrun, then torch.compile when asked for."""
    info = distributed.current()
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # static_graph lets DDP work with (reentrant) activation checkpointing.
        model = DistributedDataParallel(model, device_ids=[info.local_rank] if device == "cuda" else None,
                                        static_graph=cfg.grad_checkpointing)
    if cfg.compile:
        model = torch.compile(model)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain timm module inside torch.compile and DDP wrappers (what checkpoints hold)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def grad_sync(model: torch.nn.Module, sync: bool):
    """DDP's no_sync() while accumulating: gradients are all-reduced once per optimizer step."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def is_main_process() -> bool:
    """Only the main process writes checkpoints, metrics and logs (rank 0 under DDP)."""
    return distributed.is_main_process()


def amp_settings(amp: str, device: str) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether to use a GradScaler)."""
    if amp == "auto":
        # bf16 is a clear win on GPUs; on CPUs it is often no faster and costs precision.
        # GPUs without bf16 (before Ampere) get fp16 with a GradScaler instead.
        amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device == "cuda" else "none"
    if amp == "fp16" and device != "cuda":
        raise ValueError("--amp fp16 needs a CUDA GPU (fp16 training relies on a GradScaler); on CPU use --amp bf16 or none")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp], amp == "fp16"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
