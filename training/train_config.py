"""TrainConfig: every knob of `fakelens train`, as one frozen dataclass.

Built once from the command line (training/cli.py) or directly in Python/tests, saved as
RUN/train_config.json, and compared on `--resume` so a resumed run cannot silently change
what it trains. Importing this module is cheap (no torch).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.core.config import DetectorConfig, PreprocessConfig

OPTIMIZERS = ("adamw", "sgd")
AMP_MODES = ("auto", "bf16", "fp16", "none")
DEVICES = ("auto", "cpu", "cuda")
HEADS = ("classifier", "blocks")
BALANCES = ("none", "label", "source", "content")

# Fields that may differ between an interrupted run and its --resume without changing
# the result (how long to run, how fast to load, where to report).
# The speed knobs (compile, channels-last, checkpointing) change float rounding, not the run.
RESUMABLE_CHANGES = frozenset({"resume", "workers", "prefetch_factor", "max_steps", "epochs", "patience", "save_every",
                               "progress", "compile", "channels_last", "grad_checkpointing"})


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    model: str = DetectorConfig.arch
    # Extra timm create_model kwargs (tests use tiny ViTs: depth, embed_dim, ...).
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    pretrained_file: str | None = None
    img_size: int = PreprocessConfig.img_size
    crop_mode: str = PreprocessConfig.crop_mode
    # The scale policy the detector is served with (models/core/preprocess.py `plan_views`): a resized
    # whole-picture view (shorter side `resize_size`; None: img_size * 8 / 7, 256 for 224) and native
    # views at the picture's intrinsic scale (`undo_upscale`). "resize" crop mode keeps one view.
    scales: tuple[str, ...] = ("resized", "native")
    resize_size: int | None = None
    undo_upscale: bool = True
    epochs: int = 10
    # The global batch: under torchrun each of N processes takes batch_size / N of it.
    batch_size: int = 32
    accum_steps: int = 1
    optimizer: str = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.05
    momentum: float = 0.9
    layer_decay: float | None = None
    warmup_epochs: float = 0.5
    min_lr_ratio: float = 0.01
    clip_grad: float = 1.0
    amp: str = "auto"
    ema_decay: float | None = None
    freeze_backbone: bool = False
    # "blocks": frozen ViT, CLS tokens of `blocks` (empty: all) cached per view, head trained
    # on the cache (models/core/network.py, training/features.py). "classifier": train the timm model.
    head: str = "classifier"
    blocks: tuple[int, ...] = ()
    head_dim: int = 128
    # Adapt the backbone under a "blocks" head (models/core/lora.py): LoRA of this rank (0: off) on the
    # attention of `lora_blocks` (empty: the last four), and/or `tune_blocks` trained outright.
    # Either makes the loop read images instead of the feature cache.
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_blocks: tuple[int, ...] = ()
    tune_blocks: tuple[int, ...] = ()
    # Augmented views per training image in the feature cache (view 0 is the eval view).
    feature_views: int = 1
    # Sampling balance: "label" (real/fake 50/50), "source" (also across sources within a
    # label, weight 1/sqrt(source size)), "content" (also real/fake balanced within content clusters
    # of the frozen features: training/frozen.py), "none" (as the data comes).
    balance: str = "label"
    jpeg_prob: float = 0.3
    blur_prob: float = 0.1
    downscale_prob: float = 0.0
    noise_prob: float = 0.0
    hflip: bool = True
    # "auto": after the verdict head, fit a generator-family head (training/attribution.py) when the
    # data names at least two families and the head is "blocks"; "none": no family head.
    families: str = "auto"
    # The family head's open-set rule (models/core/config.py OPEN_SET_RULES): "energy" or "max-softmax".
    family_rule: str = "energy"
    # The open-set threshold keeps this share of val pictures of known families named; the rest is the
    # price of calling more of an unseen family "unknown" (chosen on bench/generalization.py's folds).
    family_keep: float = 0.9
    seed: int = 0
    workers: int = 0
    prefetch_factor: int = 2
    device: str = "auto"
    compile: bool = False
    # None: on for convolutional models (see train.use_channels_last).
    channels_last: bool | None = None
    grad_checkpointing: bool = False
    patience: int | None = None
    save_every: int | None = 200
    max_steps: int | None = None
    val_batch_size: int = 64
    target_fpr: float = DetectorConfig.target_fpr
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.optimizer in OPTIMIZERS, f"--optimizer {self.optimizer!r}: choose one of {OPTIMIZERS}"),
            (self.amp in AMP_MODES, f"--amp {self.amp!r}: choose one of {AMP_MODES}"),
            (self.device in DEVICES, f"--device {self.device!r}: choose one of {DEVICES}"),
            (self.epochs >= 1, f"--epochs {self.epochs}: must be >= 1"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size}: must be >= 1"),
            (self.accum_steps >= 1, f"--accum-steps {self.accum_steps}: must be >= 1"),
            (self.lr > 0, f"--lr {self.lr}: must be > 0"),
            (0 <= self.jpeg_prob <= 1, f"--jpeg-prob {self.jpeg_prob}: must be within [0, 1]"),
            (0 <= self.blur_prob <= 1, f"--blur-prob {self.blur_prob}: must be within [0, 1]"),
            (self.layer_decay is None or 0 < self.layer_decay <= 1, f"--layer-decay {self.layer_decay}: must be in (0, 1]"),
            (self.ema_decay is None or 0 < self.ema_decay < 1, f"--ema-decay {self.ema_decay}: must be in (0, 1)"),
            (self.workers >= 0, f"--workers {self.workers}: must be >= 0"),
            (self.prefetch_factor >= 1, f"--prefetch-factor {self.prefetch_factor}: must be >= 1"),
            (self.save_every is None or self.save_every >= 1, f"--save-every {self.save_every}: must be >= 1"),
            (self.max_steps is None or self.max_steps >= 1, f"--max-steps {self.max_steps}: must be >= 1"),
            (self.patience is None or self.patience >= 1, f"--patience {self.patience}: must be >= 1"),
            (not (self.pretrained_file and self.pretrained), "use either --pretrained or --pretrained-file, not both"),
            (self.head in HEADS, f"--head {self.head!r}: choose one of {HEADS}"),
            (self.balance in BALANCES, f"--balance {self.balance!r}: choose one of {BALANCES}"),
            (self.families in ("auto", "none"), f"--families {self.families!r}: choose 'auto' or 'none'"),
            (0.5 <= self.family_keep <= 1.0, f"--family-keep {self.family_keep}: must be within [0.5, 1]"),
            (self.family_rule in ("energy", "max-softmax"),
             f"--family-rule {self.family_rule!r}: choose 'energy' or 'max-softmax'"),
            (self.lora_rank >= 0, f"--lora-rank {self.lora_rank}: must be >= 0"),
            (not ((self.lora_rank or self.tune_blocks) and self.head != "blocks"),
             "--lora-rank/--tune-blocks adapt the backbone under --head blocks; add --head blocks"),
            (self.feature_views >= 0, f"--feature-views {self.feature_views}: must be >= 0"),
            (0 <= self.downscale_prob <= 1, f"--downscale-prob {self.downscale_prob}: must be within [0, 1]"),
            (0 <= self.noise_prob <= 1, f"--noise-prob {self.noise_prob}: must be within [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for key in ("blocks", "scales", "lora_blocks", "tune_blocks"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def save(self, path: Path) -> None:
        from models.core.atomic import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def resume_conflicts(self, saved: TrainConfig) -> list[str]:
        """Fields whose change would make a resumed run differ from the interrupted one."""
        mine, theirs = self.to_dict(), saved.to_dict()
        return [f"{k}: {theirs[k]!r} -> {mine[k]!r}" for k in mine if k not in RESUMABLE_CHANGES and mine[k] != theirs[k]]
