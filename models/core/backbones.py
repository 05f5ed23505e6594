"""Pretrained backbone weights that fakelens can get without a model hub, by name.

    spec = WEIGHTS["clip-vit-b16-openai"]; path = spec.fetch()

Each entry names the timm architecture, where the weights come from, and the normalisation
they were trained with (preprocessing must follow the weights, not ImageNet constants).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WeightsSpec:
    name: str
    arch: str
    # timm's own tag for the same weights, used where a hub is reachable.
    hub_tag: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Number of outputs of the checkpoint's head (the weights file includes it).
    num_classes: int
    fetch: Callable[[], Path]
    # sha256 of the file `fetch` returns; a model that names these weights refuses any other file.
    sha256: str


def _clip_b16() -> Path:
    from models.core.clip_weights import clip_vit_b16_weights

    return clip_vit_b16_weights()


def _clip_spec() -> WeightsSpec:
    from models.core import clip_weights as cw

    return WeightsSpec(
        name="clip-vit-b16-openai", arch=cw.ARCH, hub_tag="openai", mean=cw.CLIP_MEAN, std=cw.CLIP_STD,
        num_classes=512, fetch=_clip_b16,
        sha256="09152dd77814c1ecd9b1802a111a9a863af4e2549dd5fb358f26c0a20e613093",
    )


WEIGHTS: dict[str, WeightsSpec] = {s.name: s for s in (_clip_spec(),)}
# Short names a person may type for --model.
ALIASES = {"clip-vit-b16": "clip-vit-b16-openai", "clip-vit-b16-openai": "clip-vit-b16-openai"}


def weights_for_alias(name: str) -> WeightsSpec | None:
    key = ALIASES.get(name)
    return WEIGHTS[key] if key else None


def weights_spec(name: str) -> WeightsSpec:
    if name not in WEIGHTS:
        raise ValueError(f"unknown backbone weights {name!r}; known: {sorted(WEIGHTS)}")
    return WEIGHTS[name]


def verified_weights(name: str, expected_sha256: str = "") -> Path:
    """The local weights file for `name`, checked against the sha256 the model was trained with."""
    from models.core.atomic import file_sha256

    spec = weights_spec(name)
    path = spec.fetch()
    want = expected_sha256 or spec.sha256
    got = file_sha256(path)
    if got != want:
        raise ValueError(
            f"backbone weights {path} have sha256 {got[:12]}..., but this model was trained on {want[:12]}...; "
            "delete the file so it is rebuilt, or retrain the head on these weights"
        )
    return path
