"""Input discovery for `fakelens score`: files, folders, globs, manifests, fsspec URLs."""

from __future__ import annotations

import json

import fsspec
import pytest

from service.inputs import discover_inputs, fingerprint, read_bytes
from tests.conftest import write_images


@pytest.fixture()
def tree(tmp_path):
    a = write_images(tmp_path / "a", 3, size=(8, 8))
    b = write_images(tmp_path / "a" / "nested", 2, size=(8, 8), fmt="JPEG")
    (tmp_path / "a" / "notes.md").write_text("not an image")
    return tmp_path, [str(p) for p in a], [str(p) for p in b]


def test_folder_is_recursive_sorted_and_image_only(tree):
    root, a, b = tree
    assert discover_inputs([str(root / "a")]) == sorted(a + b)


def test_glob_file_and_duplicates_keep_first_order(tree):
    root, a, b = tree
    got = discover_inputs([a[2], str(root / "a" / "*.png"), str(root / "a")])
    assert got[0] == a[2]
    assert got == [a[2], a[0], a[1], *sorted(b)]  # dedupe keeps first occurrence


def test_manifests_resolve_relative_paths_against_their_folder(tree, tmp_path):
    root, a, b = tree
    (root / "list.csv").write_text("path,label\na/img_000.png,x\n" + f"{b[0]},y\n")
    (root / "list.jsonl").write_text(json.dumps({"path": "a/img_001.png"}) + "\n\n")
    (root / "a" / "list.txt").write_text("# comment\nimg_002.png\n\nnested/img_001.jpg\n")
    got = discover_inputs([str(root / "list.csv"), str(root / "list.jsonl"), str(root / "a" / "list.txt")])
    assert got == [a[0], b[0], a[1], a[2], b[1]]


def test_file_url_is_a_local_path(tree):
    root, a, _ = tree
    assert discover_inputs([f"file://{a[0]}"]) == [a[0]]


def test_memory_filesystem_folder_and_read(tree):
    fs = fsspec.filesystem("memory")
    _, a, _ = tree
    for i, p in enumerate(a):
        fs.pipe(f"/fl-inputs/sub/x{i}.png", open(p, "rb").read())
    fs.pipe("/fl-inputs/readme.txt", b"hello")
    try:
        got = discover_inputs(["memory://fl-inputs", "memory://fl-inputs/sub/x0.png"])
        assert got == [f"memory:///fl-inputs/sub/x{i}.png" for i in range(3)]  # fsspec's canonical form
        assert read_bytes(got[1]) == open(a[1], "rb").read()
    finally:
        fs.rm("/fl-inputs", recursive=True)


def test_bad_inputs_have_clear_errors(tree, tmp_path):
    root, _, _ = tree
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_inputs([str(root / "missing")])
    with pytest.raises(FileNotFoundError, match="matched no files"):
        discover_inputs([str(root / "*.tif")])
    (root / "bad.csv").write_text("file\nx.png\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        discover_inputs([str(root / "bad.csv")])
    (root / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found"):
        discover_inputs([str(root / "empty")])


def test_fingerprint_depends_on_order_and_content():
    assert fingerprint(["a", "b"]) == fingerprint(["a", "b"])
    assert fingerprint(["a", "b"]) != fingerprint(["b", "a"])
    assert fingerprint(["ab"]) != fingerprint(["a", "b"])
