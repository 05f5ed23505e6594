"""One door to the network: a timm backbone with a single logit (positive = synthetic).

Two shapes, chosen by `DetectorConfig.head`:
- "classifier": the timm model itself with `num_classes=1` (fine-tuning or a linear probe).
- "blocks": a frozen ViT whose CLS token is read after each block in `cfg.blocks` (BlockTaps)
  and a small head with learned per-block weights on top (BlockHead). Intermediate blocks keep
  the low-level traces that the final embedding of a semantic model such as CLIP discards
  (UnivFD, CVPR 2023; RINE, ECCV 2024), and a frozen foundation model generalises to unseen
  generators better than a fine-tune on a few thousand images.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from models.core.config import DetectorConfig


class BlockTaps(nn.Module):
    """A timm VisionTransformer run block by block: B x 3 x S x S -> B x len(blocks) x D CLS tokens."""

    def __init__(self, vit: nn.Module, blocks: tuple[int, ...]):
        super().__init__()
        if not all(hasattr(vit, a) for a in ("blocks", "patch_embed", "_pos_embed", "norm_pre")):
            raise ValueError(f"head='blocks' needs a timm VisionTransformer; {type(vit).__name__} has no blocks to tap")
        depth = len(vit.blocks)
        if not blocks or min(blocks) < 0 or max(blocks) >= depth:
            raise ValueError(f"blocks={blocks} must be indices in 0..{depth - 1} of this {depth}-block model")
        self.vit = vit
        self.blocks = tuple(int(b) for b in blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.vit
        x = v.norm_pre(v._pos_embed(v.patch_embed(x)))
        taps = []
        for i, block in enumerate(v.blocks[: max(self.blocks) + 1]):
            x = block(x)
            if i in self.blocks:
                taps.append(x[:, 0])
        return torch.stack(taps, dim=1)


class BlockHead(nn.Module):
    """B x L x D block tokens -> B x 1 logit.

    Each block's token is layer-normalised (the residual stream's scale grows with depth),
    projected by its own linear map, and the projections are mixed with softmax weights
    learned per block, so the head can say which depths carry the evidence.
    """

    def __init__(self, n_blocks: int, dim: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.proj_weight = nn.Parameter(torch.randn(n_blocks, dim, hidden) * dim**-0.5)
        self.proj_bias = nn.Parameter(torch.zeros(n_blocks, hidden))
        self.block_logits = nn.Parameter(torch.zeros(n_blocks))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)  # every image starts at p = 0.5
        nn.init.zeros_(self.out.bias)

    def block_weights(self) -> torch.Tensor:
        return torch.softmax(self.block_logits, dim=0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        z = torch.einsum("bld,ldh->blh", self.norm(tokens.float()), self.proj_weight) + self.proj_bias
        z = (z * self.block_weights()[None, :, None]).sum(dim=1)
        return self.out(self.drop(nn.functional.gelu(z)))


class FamilyHead(nn.Module):
    """B x L x D block tokens -> B x K generator-family logits: a linear probe on every tapped
    block's layer-normalised token. Attribution lives in low-level traces (which decoder, which
    upsampler), so it reads all depths, not the verdict head's mixed summary."""

    def __init__(self, n_blocks: int, dim: int, n_families: int, dropout: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(n_blocks * dim, n_families)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.norm(tokens.float()).flatten(1)))


class TapDetector(nn.Module):
    """Frozen backbone taps + trainable head (+ the optional family head); state dict keys
    `taps.vit.*`, `head.*` and `family_head.*`. Output: B x 1 verdict logit, or B x (1 + K) with
    the family logits after it (one tensor, so every exported runtime carries both)."""

    def __init__(self, taps: BlockTaps, head: BlockHead, family_head: FamilyHead | None = None):
        super().__init__()
        self.taps, self.head = taps, head
        self.family_head = family_head
        for p in self.taps.parameters():
            p.requires_grad_(False)  # frozen unless build_tap_detector adapts some of it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # B x L x D input is already block tokens (the training loop feeds cached features).
        tokens = x if x.dim() == 3 else self.taps(x)
        logit = self.head(tokens)
        if self.family_head is None:
            return logit
        return torch.cat([logit, self.family_head(tokens).to(logit.dtype)], dim=1)

    def train(self, mode: bool = True):
        super().train(mode)
        self.taps.eval()  # frozen: no dropout/drop-path in the backbone, ever
        return self


HEAD_PREFIX = "head."
FAMILY_PREFIX = "family_head."


def build_backbone(cfg: DetectorConfig, pretrained: bool = False, pretrained_file: str | Path | None = None) -> nn.Module:
    """The timm model of `cfg.arch` (classifier head size from `num_classes` in model_kwargs or 1)."""
    if not timm.is_model(cfg.arch):
        raise ValueError(
            f"unknown timm model {cfg.arch!r}; see timm.list_models(), e.g. 'vit_small_patch16_224', "
            "'efficientnet_lite0', or the alias 'clip-vit-b16'"
        )
    kwargs = dict(cfg.model_kwargs)
    kwargs.setdefault("num_classes", 1)
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file {path} does not exist")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
        pretrained = True
    try:
        # ViTs and other fixed-size models need the input size at construction.
        return timm.create_model(cfg.arch, pretrained=pretrained, img_size=cfg.preprocess.img_size, **kwargs)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
        return timm.create_model(cfg.arch, pretrained=pretrained, **kwargs)


def build_tap_detector(cfg: DetectorConfig, backbone: nn.Module) -> TapDetector:
    dim = int(getattr(backbone, "embed_dim", 0) or backbone.num_features)
    families = len(cfg.attribution.families)
    detector = TapDetector(BlockTaps(backbone, cfg.blocks), BlockHead(len(cfg.blocks), dim, cfg.head_dim),
                           FamilyHead(len(cfg.blocks), dim, families) if families else None)
    if cfg.lora_rank:
        from models.core.lora import add_lora

        add_lora(backbone, cfg.lora_blocks, cfg.lora_rank, cfg.lora_alpha or cfg.lora_rank)
    for name, p in detector.taps.named_parameters():
        p.requires_grad_(is_tuned(name.removeprefix("vit."), cfg))
    return detector


def is_tuned(backbone_key: str, cfg: DetectorConfig) -> bool:
    """Whether a backbone parameter is trained (and so stored beside the head)."""
    from models.core.lora import LORA_KEY

    if LORA_KEY in f".{backbone_key}":
        return True
    parts = backbone_key.split(".")
    return len(parts) > 2 and parts[0] == "blocks" and int(parts[1]) in cfg.tuned_blocks


def load_backbone_weights(backbone: nn.Module, cfg: DetectorConfig) -> None:
    """Named backbone weights (models/core/backbones.py), strictly, checked against cfg.backbone_sha256."""
    from safetensors.torch import load_file

    from models.core.backbones import verified_weights

    path = verified_weights(cfg.backbone_weights, cfg.backbone_sha256)
    backbone.load_state_dict(load_file(str(path)), strict=True)


def build_network(cfg: DetectorConfig, pretrained: bool = False, pretrained_file: str | Path | None = None) -> nn.Module:
    """Create the detector network for `cfg`.

    pretrained=True loads timm's published weights (from the hub when online);
    `pretrained_file` loads a local weights file through timm's own loader
    (`pretrained_cfg_overlay=dict(file=...)`), so classifier replacement and ViT
    position-embedding resampling behave exactly as for hub weights. A "blocks" model whose
    config names `backbone_weights` gets them from models/core/backbones.py (no hub needed).
    """
    if cfg.head == "classifier" and cfg.backbone_weights:
        # Fine-tuning named weights (e.g. CLIP on a GPU machine): load them, then a 1-logit head.
        model = build_backbone(cfg)
        load_backbone_weights(model, cfg)
        model.reset_classifier(1)
        return model
    if cfg.head == "classifier":
        return build_backbone(cfg, pretrained, pretrained_file)
    backbone = build_backbone(cfg, pretrained and not cfg.backbone_weights, pretrained_file)
    if cfg.backbone_weights:
        load_backbone_weights(backbone, cfg)
    return build_tap_detector(cfg, backbone).eval()
