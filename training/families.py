"""Which generator family each fake belongs to: the labels of the attribution head.

A manifest's `family` column says it outright. Otherwise the generator name is looked up in
GENERATOR_FAMILIES, the families of the shared datasets (../shared/datasets/*/README.md):
generators that share an architecture and a maker, so their traces look alike. A fake with no
family (an unnamed model, a generator seen once, our own TAEF2 twins, which are reconstructions
rather than generations) trains no family and stays out of attribution: at serving time such a
picture should come out `unknown`, which is what the open-set rule is for.
"""

from __future__ import annotations

from collections import Counter

from models.core.dataset import Sample

# family -> generator names (the `generator` column of the shared manifests)
FAMILY_GENERATORS: dict[str, tuple[str, ...]] = {
    "sd15": ("sd15-deliberate2", "sd15-dreamshaper3", "sd15", "stable-diffusion-1.5", "lcm-sd15"),
    "2022-mj-dalle2-sd": ("midjourney-v3", "dall-e-2", "stable-diffusion-beta-2022"),
    "gpt-4o": ("gpt-4o", "gpt-image-1", "gpt-4o-inferred", "chatgpt"),
    "nano-banana-gemini": ("nano-banana", "nano-banana-pro", "gemini"),
    "kolors-sdxl": ("kolors", "sdxl", "sdxl-1.0", "sdxl-turbo"),
    "gan": ("stylegan", "msg-stylegan", "unknown-gan", "stylegan2", "stylegan3", "progan", "biggan"),
}
GENERATOR_FAMILIES = {g: family for family, gens in FAMILY_GENERATORS.items() for g in gens}
# A family needs this many training pictures to be learned rather than memorised.
MIN_PER_FAMILY = 8


def family_of(s: Sample) -> str | None:
    """The fake's family, or None (a real picture, or a generator of no known family)."""
    if s.label != 1:
        return None
    return s.family or GENERATOR_FAMILIES.get(s.generator)


def trainable_families(train: list[Sample], min_count: int = MIN_PER_FAMILY) -> tuple[str, ...]:
    """Families with at least `min_count` training pictures, in a fixed (sorted) order."""
    pictures: dict[str, set[str]] = {}
    for s in train:
        fam = family_of(s)
        if fam is not None:
            pictures.setdefault(fam, set()).add(s.picture or s.path)
    return tuple(sorted(f for f, pics in pictures.items() if len(pics) >= min_count))


def family_counts(samples: list[Sample]) -> dict[str, int]:
    return dict(sorted(Counter(family_of(s) or "(none)" for s in samples if s.label == 1).items()))
