"""Input discovery for `fakelens score`: turn INPUT arguments into one ordered list of images.

    paths = discover_inputs(["photos/", "more/*.png", "list.csv", "memory://bucket/x.jpg"])
    data = read_bytes(paths[0])

An INPUT is a file, a folder (searched recursively for image extensions), a glob, or a
manifest (`.csv` with a `path` column, `.jsonl` with a `path` key, `.txt` with one path
a line; relative entries resolve against the manifest's folder). Any of these may be an
fsspec URL (`s3://...`, `memory://...`) when that filesystem's package is installed;
`file://` URLs become plain local paths. The result is deterministic (arguments in
order, each expanded in sorted order) with duplicates removed, so a rerun of the same
command sees the same list, which is what makes resuming by position safe.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence

# Videos are scored frame by frame (models/evidence/video.py); folders are searched for them too.
from models.evidence.video import VIDEO_EXTENSIONS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".txt")
GLOB_CHARS = ("*", "?", "[")


def is_url(spec: str) -> bool:
    return "://" in spec and not spec.startswith("file://")


def _local(spec: str) -> str:
    if spec.startswith("file://"):
        spec = spec[len("file://") :]
    return os.path.abspath(os.path.expanduser(spec))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)


def _is_manifest(name: str) -> bool:
    return name.lower().endswith(MANIFEST_EXTENSIONS)


def _url_fs(url: str):
    import fsspec

    try:
        fs, _ = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        scheme = url.split("://", 1)[0]
        raise ValueError(
            f"cannot open {url!r}: no filesystem for {scheme!r} ({e}); install its fsspec package"
        ) from None
    return fs


def _unstrip(fs, path: str) -> str:
    """fsspec strips the scheme from listed paths; put it back so the path can be reopened."""
    return fs.unstrip_protocol(path)


def read_bytes(path: str) -> bytes:
    """The bytes of one discovered input (local path or fsspec URL)."""
    if is_url(path):
        import fsspec

        with fsspec.open(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def _read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8-sig")


def _manifest_entries(path: str) -> list[str]:
    text = _read_text(path)
    name = path.lower()
    if name.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ValueError(
                f"manifest {path} has no 'path' column (columns: {reader.fieldnames}); add a header row with 'path'"
            )
        return [row["path"].strip() for row in reader if (row.get("path") or "").strip()]
    if name.endswith(".jsonl"):
        entries = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append(str(json.loads(line)["path"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(
                    f"manifest {path} line {n} is not a JSON object with a 'path' key: {line[:80]!r}"
                ) from None
        return entries
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _resolve_entry(entry: str, manifest: str) -> str:
    if "://" in entry:
        return entry if is_url(entry) else _local(entry)
    if is_url(manifest):
        base = manifest.rsplit("/", 1)[0]
        return f"{base}/{entry}"
    return os.path.normpath(os.path.join(os.path.dirname(manifest), os.path.expanduser(entry)))


def _expand_local(spec: str) -> list[str]:
    path = _local(spec)
    if any(c in spec for c in GLOB_CHARS):
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            raise FileNotFoundError(f"the pattern {spec!r} matched no files")
        return [p for m in matches for p in (_walk_local(m) if os.path.isdir(m) else [m])]
    if os.path.isdir(path):
        return _walk_local(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"input {spec!r} does not exist (give files, folders, globs or manifests)")
    if _is_manifest(path):
        return [_resolve_entry(e, path) for e in _manifest_entries(path)]
    return [path]


def _walk_local(folder: str) -> list[str]:
    """Images under `folder`, following symlinks; a symlink back to a folder above it (a loop) is
    listed itself, once, so that its row says so (service/score.py) instead of its files coming
    back under ever longer paths until the OS gives up."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        loops = [d for d in dirs if _links_back(root, d)]
        dirs[:] = sorted(d for d in dirs if d not in loops)
        found.extend(os.path.join(root, d) for d in loops)
        found.extend(os.path.join(root, f) for f in sorted(files) if _is_image(f))
    return sorted(found)


def _links_back(root: str, name: str) -> bool:
    """`root/name` is a symlink to `root` or one of the folders above it."""
    path = os.path.join(root, name)
    if not os.path.islink(path):
        return False
    target, here = os.path.realpath(path), os.path.realpath(root)
    return here == target or here.startswith(target.rstrip(os.sep) + os.sep)


def _expand_url(spec: str) -> list[str]:
    fs = _url_fs(spec)
    stripped = fs._strip_protocol(spec)
    if any(c in stripped for c in GLOB_CHARS):
        matches = sorted(fs.glob(stripped))
        if not matches:
            raise FileNotFoundError(f"the pattern {spec!r} matched no files")
        out = []
        for m in matches:
            out.extend(_walk_url(fs, m) if fs.isdir(m) else [_unstrip(fs, m)])
        return out
    if fs.isdir(stripped):
        return _walk_url(fs, stripped)
    if not fs.exists(stripped):
        raise FileNotFoundError(f"input {spec!r} does not exist")
    if _is_manifest(stripped):
        return [_resolve_entry(e, spec) for e in _manifest_entries(spec)]
    return [_unstrip(fs, stripped)]  # the canonical spelling, so duplicates compare equal


def _walk_url(fs, folder: str) -> list[str]:
    return [_unstrip(fs, p) for p in sorted(fs.find(folder)) if _is_image(p)]


def _canonical(path: str) -> str:
    if not is_url(path):
        return path
    fs = _url_fs(path)
    return _unstrip(fs, fs._strip_protocol(path))


def _dedupe(paths: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(_canonical(p) for p in paths))


def discover_inputs(specs: Sequence[str]) -> list[str]:
    """Every image named by `specs`, in argument order, each expanded sorted, duplicates dropped."""
    if not specs:
        raise ValueError("no INPUT given; pass image files, folders, globs or manifests")
    paths: list[str] = []
    for spec in specs:
        paths.extend(_expand_url(spec) if is_url(spec) else _expand_local(spec))
    paths = _dedupe(paths)
    if not paths:
        raise FileNotFoundError(
            f"no images found in {list(specs)}; folders are searched for "
            f"{', '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)}"
        )
    return paths


def fingerprint(paths: Sequence[str]) -> str:
    """A short hash of the ordered input list, stored with a job to refuse resuming different inputs."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:16]
