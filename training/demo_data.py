"""A small labelled real/synthetic dataset made on the spot: `fakelens demo-data OUT --n 200`.

Nothing comes from the network. Both classes share the same kind of content (smooth random
gradients, waves and shapes) and are saved identically (PNG, sizes drawn from one
distribution), so the only difference is how the pixels were formed:

- real: content rendered at native resolution plus camera-like sensor noise
  (signal-dependent shot noise + read noise, independent per pixel);
- fake: content rendered at half resolution and passed through a randomly initialised
  transposed-convolution upsampler (stride 2), the classic GAN checkerboard fingerprint.
  Each generator is one fixed, seeded upsampler; `OUT/fake/<generator>/` names it.

Layout: OUT/real/*.png, OUT/fake/<generator>/*.png and OUT/manifest.csv
(path,label,source,generator,split; split is the same hash split the folder loader uses).
Deterministic given --seed.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from models.core.dataset import hash_split

SIZE_RANGE = (64, 160)
MANIFEST_FIELDS = ("path", "label", "source", "generator", "split")


@dataclass(frozen=True)
class Upsampler:
    """A fixed random 'generator': transposed conv (stride 2) -> leaky ReLU -> 1x1 conv."""

    name: str
    kernel: int
    w1: np.ndarray  # hidden x 3 x k x k
    w2: np.ndarray  # 3 x hidden

    @classmethod
    def seeded(cls, name: str, kernel: int, seed: int, hidden: int = 8) -> Upsampler:
        rng = np.random.default_rng(seed)
        return cls(name, kernel, rng.normal(0, 1, (hidden, 3, kernel, kernel)), rng.normal(0, 1, (3, hidden)))

    def residual(self, low: np.ndarray) -> np.ndarray:
        """h x w x 3 in [-1, 1] -> 2h x 2w x 3 artifact pattern with unit std."""
        h, w = low.shape[:2]
        k = self.kernel
        # Transposed conv = scatter each input pixel's kernel-weighted copy at stride 2; the
        # uneven overlap of k-wide kernels at stride 2 is what leaves the checkerboard.
        out = np.zeros((2 * h + k, 2 * w + k, self.w1.shape[0]))
        contrib = np.einsum("yxc,ocij->yxijo", low, self.w1)
        for i in range(k):
            for j in range(k):
                out[i : i + 2 * h : 2, j : j + 2 * w : 2] += contrib[:, :, i, j]
        pad = (k - 2) // 2 if k > 2 else 0
        out = out[pad : pad + 2 * h, pad : pad + 2 * w]
        out = np.where(out > 0, out, 0.2 * out)
        res = out @ self.w2.T
        return (res - res.mean()) / (res.std() + 1e-8)


def generators(seed: int) -> list[Upsampler]:
    return [Upsampler.seeded("upsampler-k4", 4, seed * 7919 + 1), Upsampler.seeded("upsampler-k3", 3, seed * 7919 + 2)]


def content(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random scene, h x w x 3 float in [0, 1]: gradient + waves + soft shapes."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = rng.uniform(0.2, 0.8, 3) + np.stack([rng.uniform(-0.4, 0.4) * x + rng.uniform(-0.4, 0.4) * y] * 3, -1)
    for _ in range(3):
        f, phase = rng.uniform(0.5, 4), rng.uniform(0, 2 * np.pi)
        theta = rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * f * (x * np.cos(theta) + y * np.sin(theta)) + phase)
        base = base + wave[..., None] * rng.uniform(-0.12, 0.12, 3)
    img = Image.fromarray(np.uint8(np.clip(base, 0, 1) * 255))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.uniform(-0.2, 1, 2) * (w, h)
        x1, y1 = x0 + rng.uniform(0.1, 0.6) * w, y0 + rng.uniform(0.1, 0.6) * h
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x0, y0, x1, y1], fill=color)
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5)) * max(h, w) / 100))
    return np.asarray(img, dtype=np.float64) / 255.0


def real_image(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    scene = content(h, w, rng)
    shot = rng.normal(0, 1, scene.shape) * np.sqrt(scene) * rng.uniform(0.04, 0.07)
    read = rng.normal(0, 1, scene.shape) * rng.uniform(0.01, 0.02)
    return np.uint8(np.clip(scene + shot + read, 0, 1) * 255 + 0.5)


def fake_image(h: int, w: int, gen: Upsampler, rng: np.random.Generator) -> np.ndarray:
    low = content((h + 1) // 2, (w + 1) // 2, rng)
    # Nearest upsampling carries the content; the generator's residual adds its fingerprint.
    up = low.repeat(2, axis=0).repeat(2, axis=1)
    strength = rng.uniform(0.05, 0.08)
    out = up + strength * gen.residual(low * 2 - 1)
    return np.uint8(np.clip(out[:h, :w], 0, 1) * 255 + 0.5)


def _prepare_out(out: Path) -> None:
    """Create OUT, or clear an earlier demo-data output there; refuse to clobber anything else."""
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"{out} exists and is not a folder")
        foreign = [p.name for p in out.iterdir() if p.name not in ("real", "fake", "manifest.csv")]
        if foreign:
            raise ValueError(f"{out} is not empty (holds {sorted(foreign)[:5]}); choose a new folder for demo data")
        for name in ("real", "fake"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def write_demo_dataset(out: str | Path, n: int = 200, seed: int = 0) -> Path:
    """Write n images (half real, half fake split across the generators); returns the manifest path."""
    if n < 2:
        raise ValueError(f"--n {n}: need at least 2 images (one per class)")
    out = Path(out)
    _prepare_out(out)
    gens = generators(seed)
    rows = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        h, w = (int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, 2))
        if i % 2 == 0:
            arr, rel, label, gen_name = real_image(h, w, rng), f"real/{i:05d}.png", "real", "real"
        else:
            gen = gens[(i // 2) % len(gens)]
            arr, rel, label, gen_name = fake_image(h, w, gen, rng), f"fake/{gen.name}/{i:05d}.png", "fake", gen.name
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(out / rel, format="PNG")
        rows.append(dict(path=rel, label=label, source="demo", generator=gen_name, split=hash_split(rel)))
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return manifest


# Camera photographs bundled with scikit-image (no download): what the shipped default detector
# is shown on by `make demo`. They are real; the demo has no offline source of real-world fakes.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")


def write_demo_photos(out: str | Path) -> Path:
    """Write scikit-image's bundled colour photographs as JPEGs under OUT/real/; returns OUT."""
    try:
        from skimage import data
    except ImportError:
        raise ValueError("--photos needs scikit-image (pip install scikit-image, part of the dev extra)") from None
    out = Path(out)
    _prepare_out(out)
    (out / "real").mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        Image.fromarray(getattr(data, name)()).convert("RGB").save(out / "real" / f"{name}.jpg", quality=95)
    return out
