"""Labelled sample lists: an ImageFolder layout or a CSV/JSONL manifest.

Folder layout: `DATA/real/**` and `DATA/fake/**`; a subfolder directly under `fake/`
names the generator. Manifest: columns `path` (relative to the manifest's folder),
`label` (`real`/`fake` or 0/1), optional `source`, `generator`, `split`, `family` (generator
family, for the attribution head), `parent`/`picture` and `view` (which picture and view a file is).
Without a split column, samples are split deterministically by a hash of their path.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
SPLITS = ("train", "val", "test")
LABELS = {"real": 0, "fake": 1, "0": 0, "1": 1, "synthetic": 1}


@dataclass(frozen=True)
class Sample:
    path: str
    label: int  # 1 = synthetic
    source: str = ""
    generator: str = ""
    split: str = ""
    # Which picture this file shows (one picture can come as several files: a shrunk whole and a
    # native-resolution crop). Views of one picture share it; "" means the file is its own picture.
    picture: str = ""
    # Which of the scale policy's views the file is: "resized" (a whole picture shrunk to the
    # training scale), "native" (a crop at the picture's own resolution), "" (not said: resized).
    view: str = ""
    # Which generator family a fake comes from (a manifest's `family` column); "" means not said,
    # and training/families.py may infer it from the generator.
    family: str = ""


def hash_split(key: str, val_pct: int = 15, test_pct: int = 15) -> str:
    """A split that never changes when files are added or the machine changes."""
    bucket = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 100
    if bucket < 100 - val_pct - test_pct:
        return "train"
    return "val" if bucket < 100 - test_pct else "test"


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _from_folder(root: Path) -> list[Sample]:
    missing = [name for name in ("real", "fake") if not (root / name).is_dir()]
    if missing:
        raise ValueError(
            f"{root} is not a dataset folder: missing {', '.join(m + '/' for m in missing)} "
            "(expected real/ and fake/ subfolders, or pass a CSV/JSONL manifest)"
        )
    samples = []
    for name, label in (("real", 0), ("fake", 1)):
        for p in _images_under(root / name):
            rel = p.relative_to(root)
            generator = rel.parts[1] if label == 1 and len(rel.parts) > 2 else name
            samples.append(Sample(str(p), label, source=name, generator=generator, split=hash_split(str(rel))))
    return samples


def _parse_label(value: str, where: str) -> int:
    key = str(value).strip().lower()
    if key not in LABELS:
        raise ValueError(f"{where}: label {value!r} is not one of real/fake/0/1")
    return LABELS[key]


def _from_manifest(manifest: Path) -> list[Sample]:
    if manifest.suffix.lower() == ".jsonl":
        rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    else:
        with manifest.open(newline="") as f:
            rows = list(csv.DictReader(f))
    samples = []
    for i, row in enumerate(rows, start=2):
        where = f"{manifest}:{i}"
        if "path" not in row or "label" not in row:
            raise ValueError(f"{where}: manifest rows need 'path' and 'label' columns, got {sorted(row)}")
        rel = str(row["path"])
        split = (row.get("split") or "").strip() or hash_split(rel)
        if split not in SPLITS:
            raise ValueError(f"{where}: split {split!r} is not one of {SPLITS}")
        path = Path(rel) if Path(rel).is_absolute() else manifest.parent / rel
        samples.append(
            Sample(
                str(path),
                _parse_label(row["label"], where),
                source=str(row.get("source") or ""),
                generator=str(row.get("generator") or ""),
                split=split,
                picture=picture_id(row, rel, dataset_name(manifest)),
                view=str(row.get("view") or ("native" if row.get("parent") else "")),
                family=str(row.get("family") or ""),
            )
        )
    return hold_back_val(samples, manifest)


def picture_id(row: dict, rel: str, dataset: str) -> str:
    """`parent` names another dataset's file (realfake-native: `realfake-dev/images/...`); `picture`
    is local to its dataset (realfake-families); otherwise the file is the picture."""
    if row.get("parent"):
        return str(row["parent"])
    return f"{dataset}/{row.get('picture') or rel}"


def hold_back_val(samples: list[Sample], where: Path) -> list[Sample]:
    """A manifest that ships train/val but no test split: its `val` is what its authors held
    back, so it becomes our test split, and 15% of its train (by path hash) becomes val. The
    threshold and band are then never fitted on the images the dataset reserves for judging."""
    splits = {s.split for s in samples}
    if "test" in splits or "val" not in splits:
        return samples
    out = []
    for s in samples:
        if s.split == "val":
            split = "test"
        elif s.split == "train":
            rel = str(Path(s.path).relative_to(where.parent)) if Path(s.path).is_relative_to(where.parent) else s.path
            split = "val" if hash_split(rel, val_pct=15, test_pct=0) == "val" else "train"
        else:
            split = s.split
        out.append(replace(s, split=split))
    return out


def split_specs(data: str | Path) -> list[str]:
    """Several datasets at once: `--data A --data B` arrives here as "A,B"."""
    return [part for part in str(data).split(",") if part.strip()]


def list_samples(data: str | Path, split: str | None = None) -> list[Sample]:
    """All samples of one or several (comma-separated) dataset folders or manifests, optionally
    only one split. With several, each sample's source is prefixed by its dataset's name
    (`realfake-train/bsds500`), so per-source reports and balancing keep them apart."""
    specs = split_specs(data)
    if len(specs) > 1:
        out = []
        for spec in specs:
            name = dataset_name(spec)
            out += [replace(s, source=f"{name}/{s.source or 'unknown'}") for s in list_samples(spec)]
        out = align_splits(out)
        return out if split is None else [s for s in out if s.split == split]
    data = Path(specs[0] if specs else data)
    if not data.exists():
        raise FileNotFoundError(f"dataset {data} does not exist")
    samples = _from_folder(data) if data.is_dir() else _from_manifest(data)
    if not samples:
        raise ValueError(f"dataset {data} contains no images (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        samples = [s for s in samples if s.split == split]
    return samples


def val_samples(data: str) -> list[tuple[str, int]]:
    """(path, label) of DATA's val split: what export's `--data` and the int8 gate measure on."""
    samples = list_samples(data, split="val")
    if not samples:
        raise ValueError(f"dataset {data} has no val split images to measure the AUC change on")
    return [(s.path, s.label) for s in samples]


def align_splits(samples: list[Sample]) -> list[Sample]:
    """A file that shows another file's picture (a native crop of a shrunk picture, a synthetic twin
    of a real) takes that file's split: one picture never has a view in train and another in val
    or test, and a picture held back for testing stays held back in every view."""
    own = {s.picture: s.split for s in samples if s.picture and _is_own_picture(s)}
    return [replace(s, split=own[s.picture]) if not _is_own_picture(s) and s.picture in own else s for s in samples]


def _is_own_picture(s: Sample) -> bool:
    return Path(s.path).as_posix().endswith(s.picture.split("/", 1)[-1])


def dataset_name(spec: str | Path) -> str:
    """realfake-train for ../shared/datasets/realfake-train/manifest.csv or for the folder itself."""
    p = Path(spec)
    return p.parent.name if p.is_file() else p.name


def fingerprint(samples: list[Sample]) -> str:
    """A short hash of which files, labels and splits a model was trained on."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.path):
        h.update(f"{Path(s.path).name}\t{s.label}\t{s.split}\n".encode())
    return h.hexdigest()[:16]
