"""The detector's configuration: one frozen dataclass, saved beside every checkpoint and export.

Everything a later stage needs to reproduce the model's view of an image (architecture,
input size, crop policy, normalisation) and to turn a logit into a verdict (temperature,
threshold) lives here, so the service and scorer never guess.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.core.atomic import atomic_write_text

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Crop modes. "crop" keeps native resolution (centre crop, pad when smaller): resizing
# smooths away the high-frequency generator fingerprints detectors rely on.
CROP_MODES = ("crop", "resize")
# Evaluation views. "center" scores one crop; "tiles" averages logits over a grid of
# native-resolution crops covering the image (large images keep their artifacts).
VIEW_MODES = ("center", "tiles")
# The scale policy (models/core/preprocess.py `plan_views`): "resized" is the whole picture shrunk so its
# shorter side is `resize_size` (the scale the shared datasets store, so the scale the model was
# trained at), centre-cropped; "native" is a crop (or tiles) at the picture's own resolution.
SCALES = ("resized", "native")
HEADS = ("classifier", "blocks")


OPEN_SET_RULES = ("energy", "max-softmax")


@dataclass(frozen=True)
class AttributionConfig:
    """Which generator family a synthetic picture resembles (models/core/attribution.py).

    `families` name the columns of the family head (none: the model attributes nothing). The
    open-set rule answers "unknown" when the picture's family logits score below `threshold`:
    "energy" scores T * logsumexp(logits / T) (how strongly any known family fires), "max-softmax"
    the top family's probability. Both the rule's threshold and the softmax temperature `T` are
    chosen on validation data (training/attribution.py), so a generator the head never saw does
    not get a confident wrong name.
    """

    families: tuple[str, ...] = ()
    rule: str = "energy"
    threshold: float = 0.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if len(set(self.families)) != len(self.families) or "unknown" in self.families:
            raise ValueError(f"families={self.families!r} must be distinct and not 'unknown'")
        if self.families and len(self.families) < 2:
            raise ValueError("a family head needs at least two families")
        if self.rule not in OPEN_SET_RULES:
            raise ValueError(f"rule={self.rule!r} is not one of {OPEN_SET_RULES}")
        if self.rule == "max-softmax" and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold} of rule 'max-softmax' must be within [0, 1]")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")


@dataclass(frozen=True)
class PreprocessConfig:
    img_size: int = 224
    crop_mode: str = "crop"
    views: str = "center"
    max_tiles: int = 9
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Which views a picture yields, in this order; one picture's view logits are combined as
    # (1 - native_weight) * resized + native_weight * mean(native), a rule chosen on validation data.
    # The default, native only, is what detectors trained before the scale policy saw.
    scales: tuple[str, ...] = ("native",)
    resize_size: int = 256
    native_weight: float = 0.5
    # Take the native view at the picture's intrinsic scale: a 4x upscaled picture is shrunk back
    # by 4 first (estimated from its spectrum), so upscaling cannot wash out a generator's traces.
    undo_upscale: bool = False

    def __post_init__(self) -> None:
        if not self.scales or len(set(self.scales)) != len(self.scales) or not set(self.scales) <= set(SCALES):
            raise ValueError(f"scales={self.scales!r} must be distinct names from {SCALES}")
        if "resized" in self.scales and self.crop_mode != "crop":
            raise ValueError("scales with 'resized' cut native views by cropping; use crop_mode='crop'")
        if not 0.0 <= self.native_weight <= 1.0:
            raise ValueError(f"native_weight={self.native_weight} must be within [0, 1]")
        if self.resize_size < self.img_size:
            raise ValueError(f"resize_size={self.resize_size} must be >= img_size={self.img_size}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode={self.crop_mode!r} is not one of {CROP_MODES}")
        if self.views not in VIEW_MODES:
            raise ValueError(f"views={self.views!r} is not one of {VIEW_MODES}")
        if self.img_size < 8:
            raise ValueError(f"img_size={self.img_size} is too small (need >= 8)")
        if self.max_tiles < 1:
            raise ValueError(f"max_tiles={self.max_tiles} must be >= 1")


@dataclass(frozen=True)
class DetectorConfig:
    """A real-vs-synthetic detector: a timm backbone with one logit (positive = synthetic)."""

    arch: str = "vit_small_patch16_224"
    # Extra timm create_model kwargs (e.g. depth/embed_dim for tiny test models).
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # "classifier": the timm model with a 1-logit classifier (fine-tuned or linear probe).
    # "blocks": a frozen ViT whose CLS token is tapped after each block in `blocks`, feeding a
    # small head with learned per-block weights (RINE/UnivFD style; models/core/network.py).
    head: str = "classifier"
    blocks: tuple[int, ...] = ()
    head_dim: int = 128
    # Backbone adaptation under a "blocks" head: LoRA of rank `lora_rank` on the attention of
    # `lora_blocks`, and `tuned_blocks` trained outright (models/core/lora.py). Only these and the head
    # are stored; the rest of the backbone comes from `backbone_weights`.
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_blocks: tuple[int, ...] = ()
    tuned_blocks: tuple[int, ...] = ()
    # Identity of the frozen backbone's weights (models/core/backbones.py): a name such as
    # "clip-vit-b16-openai" and the sha256 of the weights file. A "blocks" model folder stores only
    # the head; the backbone is rebuilt from these and refused when the file differs.
    backbone_weights: str = ""
    backbone_sha256: str = ""
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    # Calibration, fitted on validation data (training/calibrate.py).
    temperature: float = 1.0
    threshold: float = 0.5
    target_fpr: float = 0.05
    # Probabilities in [low, high) get the label "uncertain" (models/core/verdict.py); None: no band.
    uncertain_band: tuple[float, float] | None = None
    name: str = "fakelens-detector"
    version: str = ""
    # Facts recorded at training time: validation metrics, data fingerprint, ...
    metrics: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    # The generator-family head beside the verdict logit; it never changes the verdict.
    attribution: AttributionConfig = field(default_factory=AttributionConfig)

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r} is not one of {HEADS}")
        if self.head == "blocks" and not self.blocks:
            raise ValueError("head='blocks' needs the block indices to tap (blocks=...)")
        if self.attribution.families and self.head != "blocks":
            raise ValueError("a family head reads the tapped block tokens: it needs head='blocks'")
        if self.uncertain_band is not None:
            low, high = self.uncertain_band
            if not (0.0 <= low <= self.threshold <= high <= 1.0):
                raise ValueError(
                    f"uncertain_band={self.uncertain_band} must satisfy 0 <= low <= threshold "
                    f"({self.threshold}) <= high <= 1"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def outputs(self) -> int:
        """Columns of the network's output: the verdict logit, then one logit per family."""
        return 1 + len(self.attribution.families)

    @property
    def tunes_backbone(self) -> bool:
        """True when training changes the backbone: images, not cached features, feed the loop."""
        return self.head == "blocks" and (self.lora_rank > 0 or bool(self.tuned_blocks))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        d = dict(d)
        pre = d.pop("preprocess", {}) or {}
        for key in ("mean", "std", "scales"):
            if key in pre:
                pre[key] = tuple(pre[key])
        for key in ("blocks", "lora_blocks", "tuned_blocks"):
            if key in d:
                d[key] = tuple(int(b) for b in d[key])
        if d.get("uncertain_band") is not None:
            d["uncertain_band"] = tuple(float(x) for x in d["uncertain_band"])
        att = dict(d.pop("attribution", None) or {})
        if "families" in att:
            att["families"] = tuple(att["families"])
        if "min_confidence" in att:  # the first family heads' name for a max-softmax threshold
            att["threshold"], att["rule"] = att.pop("min_confidence"), "max-softmax"
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown detector config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(preprocess=PreprocessConfig(**pre), attribution=AttributionConfig(**att), **d)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> DetectorConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"detector config {path} is missing") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"detector config {path} is not valid JSON: {e}") from None
        return cls.from_dict(data)
