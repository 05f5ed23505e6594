"""Content-matched synthetic twins: each real training picture passed through a generator's
autoencoder (TAEF2, a tiny stand-in for the FLUX.2 VAE), so real and twin depict the same thing and
differ only in how the pixels were made (aligned datasets, ICLR 2025; B-Free, CVPR 2025).

    fakelens twins --data REAL_MANIFEST --weights ../shared/weights/taef2 --out twins/ [--limit N]

A twin is written the way its real was stored (same size, baseline JPEG q95 4:4:4, no metadata),
so the codec and the scale cannot tell the classes apart; twins cleaner than their real would teach
"sharp means fake". The output is a manifest: label fake, generator taef2, the real's split and
picture, and one source for all twins, so source-balanced sampling weighs them as one source
whatever their number. It is resumable: a twin already on disk is never recomputed, and the
manifest is rewritten atomically at the end. Twins are a pure function of the real's pixels.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from models.core.atomic import atomic_write, atomic_write_text
from models.core.dataset import Sample
from models.core.preprocess import decode_image

log = logging.getLogger("fakelens.train")
ENCODER_FILE, DECODER_FILE = "taef2_encoder.pth", "taef2_decoder.pth"


def conv(i: int, o: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(i, o, 3, padding=1, **kw)


class Block(nn.Module):
    def __init__(self, i: int, o: int, gn: bool = False):
        super().__init__()
        self.conv = nn.Sequential(conv(i, o), nn.ReLU(), conv(o, o), nn.ReLU(), conv(o, o))
        self.skip = nn.Conv2d(i, o, 1, bias=False) if i != o else nn.Identity()
        # The FLUX.2 variant mixes in a pooled (group-normalised) context at the lowest resolutions.
        self.pool = nn.Sequential(nn.Conv2d(i, 4 * i, 1, bias=False), nn.GroupNorm(4, 4 * i), nn.ReLU(),
                                  nn.Conv2d(4 * i, i, 1, bias=False)) if gn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return torch.relu(self.conv(x) + self.skip(x))


class Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def encoder(latent: int = 32) -> nn.Sequential:
    layers: list[nn.Module] = [conv(3, 64), Block(64, 64)]
    for stage in range(3):
        layers += [conv(64, 64, stride=2, bias=False)] + [Block(64, 64, gn=stage == 2) for _ in range(3)]
    return nn.Sequential(*layers, conv(64, latent))


def decoder(latent: int = 32) -> nn.Sequential:
    layers: list[nn.Module] = [Clamp(), conv(latent, 64), nn.ReLU()] + [Block(64, 64, gn=True) for _ in range(3)]
    for blocks in (3, 3, 1):
        layers += [nn.Upsample(scale_factor=2), conv(64, 64, bias=False)] + [Block(64, 64) for _ in range(blocks)]
    return nn.Sequential(*layers, conv(64, 3))


class Autoencoder(nn.Module):
    """RGB in [0, 1] -> 32-channel latent at 1/8 resolution -> RGB in [0, 1]."""

    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = encoder(), decoder()

    @classmethod
    def load(cls, folder: str | Path) -> Autoencoder:
        folder = Path(folder)
        model = cls()
        for part, name in ((model.encoder, ENCODER_FILE), (model.decoder, DECODER_FILE)):
            path = folder / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing; --weights takes the folder holding {ENCODER_FILE} "
                                        f"and {DECODER_FILE} (e.g. ../shared/weights/taef2)")
            part.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        return model.eval()

    @torch.inference_mode()
    def reconstruct(self, rgb: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 -> the same size, through the latent. Sides are padded by reflection to a
        multiple of 8 and cut back, so every twin has its real's exact size."""
        h, w = rgb.shape[:2]
        x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float() / 255
        ph, pw = -h % 8, -w % 8
        if ph or pw:
            x = nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
        y = self.decoder(self.encoder(x))[0, :, :h, :w].clamp(0, 1)
        return (y.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def store_like_real(rgb: np.ndarray) -> bytes:
    """The shared datasets' storage: baseline JPEG q95, 4:4:4, no metadata."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, subsampling=0, optimize=True)
    return buf.getvalue()


def pick_reals(samples: list[Sample], limit: int | None, splits=("train", "val")) -> list[Sample]:
    """Real samples of `splits`, at most `limit`, spread evenly over sources (round robin in a
    fixed hash order), so the twins do not all depict the largest source's content."""
    by_source: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: hashlib.sha1(s.path.encode()).hexdigest()):
        if s.label == 0 and s.split in splits:
            by_source[s.source].append(s)
    out, queues = [], [list(v) for _, v in sorted(by_source.items())]
    while queues and (limit is None or len(out) < limit):
        for q in queues:
            if q and (limit is None or len(out) < limit):
                out.append(q.pop(0))
        queues = [q for q in queues if q]
    return out


def twin_name(s: Sample) -> str:
    p = Path(s.path)
    return f"{hashlib.sha1(s.path.encode()).hexdigest()[:10]}-{p.stem}.jpg"


def make_twins(reals: list[Sample], weights: str | Path, out: str | Path, threads: int | None = None) -> Path:
    """Write a twin for each real into `out/images/` and `out/manifest.csv`; returns the manifest."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    model = Autoencoder.load(weights)
    rows = []
    for i, s in enumerate(reals):
        rel = f"images/{twin_name(s)}"
        target = out / rel
        if not target.is_file():  # resume: a finished twin is never recomputed
            try:
                rgb = np.asarray(decode_image(s.path)[0])
            except (ValueError, OSError) as e:
                log.warning("no twin for unreadable %s: %s", s.path, e)
                continue
            data = store_like_real(model.reconstruct(rgb))
            atomic_write(target, lambda tmp, data=data: Path(tmp).write_bytes(data))
        rows.append({"path": rel, "label": "fake", "source": "taef2-twins",
                     "generator": "taef2", "split": s.split, "parent": s.picture or s.path,
                     "view": s.view or "resized"})
        if (i + 1) % 50 == 0:
            log.info("twins: %d/%d", i + 1, len(reals))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["path", "label", "source", "generator", "split", "parent", "view"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "manifest.csv", buf.getvalue())
    return out / "manifest.csv"
