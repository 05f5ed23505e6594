"""Where the evidence is: occlusion relevance from the same model, views and backend that scored the image.

    heat = explain(detector, rgb, grid=7)      # or, split for the service:
    batch = occluded_views(views, grid)        # views = eval_views(rgb, cfg.preprocess)
    heat = relevance_map(rgb, cfg.preprocess, base_logits, batch_logits, grid)
    overlay(rgb, heat).save("heat.png")

Each model view is cut into grid x grid cells; each cell in turn is replaced by the
dataset mean (0 after normalisation, what padding already uses) and the view is scored
again. A cell's relevance is how much the synthetic logit falls when it is hidden:
positive = that region pushed the verdict towards `synthetic`. Occlusion needs only
forward passes, so it explains exactly the runtime that answered (ONNX Runtime, OpenVINO,
eager) rather than a PyTorch copy of it, at the cost of grid^2 extra forwards per view
(docs/evidence.md has the measured cost). Cells are mapped back to the image through the
same crop/pad/tile geometry `models.core.preprocess.eval_views` used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models.core.config import PreprocessConfig
from models.core.preprocess import View, aggregate_views, eval_views, image_views, plan_views, scaled_size

DEFAULT_GRID = 7
# Each view costs grid^2 + 1 forwards: 16 (257 per view) bounds what one request can ask for.
MAX_GRID = 16
OVERLAY_MAX_SIDE = 1024


@dataclass(frozen=True)
class Heat:
    """Relevance per cell over the part of the image the model saw, in original pixels."""

    values: np.ndarray  # rows x cols, float (NaN where no view covered the cell)
    origin: tuple[float, float]  # x, y of the top-left cell in the original image
    cell_px: float  # cell side in original pixels
    image_size: tuple[int, int]  # original width, height
    base_logit: float  # the image's logit (its views combined by the scale policy) before any occlusion

    def to_dict(self) -> dict:
        rows = [[None if math.isnan(v) else round(float(v), 5) for v in row] for row in self.values]
        return {"values": rows, "rows": len(rows), "cols": len(rows[0]) if rows else 0,
                "origin": [round(self.origin[0], 2), round(self.origin[1], 2)],
                "cell_px": round(self.cell_px, 3), "image_size": list(self.image_size),
                "base_logit": self.base_logit,
                "meaning": "drop of the synthetic logit when the cell is hidden; positive = evidence for synthetic"}


def cell_size(pre: PreprocessConfig, grid: int) -> int:
    top = min(MAX_GRID, pre.img_size)
    if not 1 <= grid <= top:
        raise ValueError(f"grid={grid}; choose 1..{top} cells per side (default {DEFAULT_GRID}; each view costs "
                         "grid^2 + 1 forwards)")
    return math.ceil(pre.img_size / grid)


def occluded_views(views: np.ndarray, grid: int) -> np.ndarray:
    """(V*grid*grid) x 3 x S x S: every view with one cell set to the dataset mean, cells row-major."""
    v, _, s, _ = views.shape
    cell = math.ceil(s / grid)
    out = np.repeat(views, grid * grid, axis=0).reshape(v, grid, grid, *views.shape[1:])
    for i in range(grid):
        for j in range(grid):
            out[:, i, j, :, i * cell : (i + 1) * cell, j * cell : (j + 1) * cell] = 0.0
    return out.reshape(v * grid * grid, *views.shape[1:])


def view_offsets(width: int, height: int, pre: PreprocessConfig, views: list[View] | None = None) -> list[tuple[int, int]]:
    """(dy, dx) per view such that view pixel (r, c) is pixel (r + dy, c + dx) of the picture
    scaled by that view's scale.

    Mirrors `eval_pixels`/`crop_or_pad`: a crop origin is clamped at 0 and a short side is
    padded symmetrically (negative offsets then point into the padding)."""
    s = pre.img_size

    def offset(length: int, origin: int) -> int:
        origin = max(origin, 0)
        covered = min(s, length - origin)
        return origin - (s - covered) // 2

    out = []
    for v in views if views is not None else plan_views(width, height, pre):
        w, h = scaled_size(width, height, v.scale)
        out.append((offset(h, v.top), offset(w, v.left)))
    return out


def relevance_map(img: Image.Image, pre: PreprocessConfig, base_logits, occluded_logits, grid: int) -> Heat:
    """Per-cell relevance mapped from view coordinates back onto the picture.

    Views of several scales (the scale policy's resized and native views) are painted onto one
    canvas at the finest view's scale; the grid's cells are that view's cells."""
    base = np.asarray(base_logits, dtype=np.float64).reshape(-1)
    drops = base[:, None, None] - np.asarray(occluded_logits, dtype=np.float64).reshape(len(base), grid, grid)
    views = image_views(img, pre)
    if len(views) != len(base):
        raise ValueError(f"{len(base)} view logits for {len(views)} views of a {img.size[0]}x{img.size[1]} input")
    offsets = view_offsets(*img.size, pre, views)
    scale = max(v.scale for v in views)
    w, h = scaled_size(*img.size, scale)
    cell = cell_size(pre, grid)
    total, count = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
    for view, (dy, dx), drop in zip(views, offsets, drops, strict=True):
        zoom = scale / view.scale  # view pixels -> canvas pixels
        for i in range(grid):
            for j in range(grid):
                y0, x0 = dy + i * cell, dx + j * cell
                y1, x1 = dy + min((i + 1) * cell, pre.img_size), dx + min((j + 1) * cell, pre.img_size)
                y0, x0 = max(0, round(y0 * zoom)), max(0, round(x0 * zoom))
                y1, x1 = min(h, round(y1 * zoom)), min(w, round(x1 * zoom))
                if y1 > y0 and x1 > x0:
                    total[y0:y1, x0:x1] += drop[i, j]
                    count[y0:y1, x0:x1] += 1
    ys, xs = np.nonzero(count)
    top, left = int(ys.min()), int(xs.min())
    rows = math.ceil((ys.max() + 1 - top) / cell)
    cols = math.ceil((xs.max() + 1 - left) / cell)
    values = np.full((rows, cols), np.nan)
    for r in range(rows):
        for c in range(cols):
            t, n = total[top + r * cell : top + (r + 1) * cell, left + c * cell : left + (c + 1) * cell], \
                   count[top + r * cell : top + (r + 1) * cell, left + c * cell : left + (c + 1) * cell]
            if n.sum() > 0:
                values[r, c] = float(t[n > 0].sum() / n[n > 0].sum())
    return Heat(values=values, origin=(left / scale, top / scale), cell_px=cell / scale,
                image_size=img.size, base_logit=float(aggregate_views(base, [len(base)], pre)[0]))


def explain(detector, img: Image.Image, grid: int = DEFAULT_GRID, batch_size: int = 32) -> Heat:
    """The occlusion heat of one RGB image, run locally through `detector` (models.runtime.detector.Detector)."""
    import torch

    pre = detector.config.preprocess
    cell_size(pre, grid)
    views = eval_views(img, pre)
    batch = occluded_views(views, grid)
    base = detector.view_logits(torch.from_numpy(views))
    logits = np.concatenate([detector.view_logits(torch.from_numpy(batch[i : i + batch_size]))
                             for i in range(0, len(batch), batch_size)])
    return relevance_map(img, pre, base, logits, grid)


def overlay(img: Image.Image, heat: Heat, alpha: float = 0.5) -> Image.Image:
    """The image (at most OVERLAY_MAX_SIDE px) with positive relevance painted over it (red = evidence)."""
    scale = min(1.0, OVERLAY_MAX_SIDE / max(img.size))
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    base = img.convert("RGB").resize(size, Image.Resampling.BILINEAR) if scale < 1 else img.convert("RGB")
    positive = np.nan_to_num(np.clip(heat.values, 0, None), nan=0.0)
    peak = positive.max()
    norm = positive / peak if peak > 0 else positive
    canvas = np.zeros((size[1], size[0]), np.float32)
    seen = np.zeros_like(canvas, dtype=bool)
    cell = heat.cell_px * scale
    for r in range(norm.shape[0]):
        for c in range(norm.shape[1]):
            if np.isnan(heat.values[r, c]):
                continue
            y0, x0 = round(heat.origin[1] * scale + r * cell), round(heat.origin[0] * scale + c * cell)
            y1, x1 = min(size[1], round(y0 + cell)), min(size[0], round(x0 + cell))
            canvas[y0:y1, x0:x1] = norm[r, c]
            seen[y0:y1, x0:x1] = True
    # A "hot" ramp: black -> red -> yellow -> white as relevance grows (no matplotlib in the service).
    colour = np.stack([np.clip(3 * canvas, 0, 1), np.clip(3 * canvas - 1, 0, 1), np.clip(3 * canvas - 2, 0, 1)],
                      axis=-1) * 255
    rgb = np.asarray(base, dtype=np.float32)
    mixed = np.where(seen[..., None], (1 - alpha) * rgb + alpha * colour, rgb * 0.6)  # unseen: dimmed
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8))
