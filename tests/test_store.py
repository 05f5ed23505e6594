"""The BentoML model store: `fakelens export` registers, tags load, `fakelens/bentoml models list` show it.

BentoML reads BENTOML_HOME when it is imported, so everything touching the store runs in
subprocesses with BENTOML_HOME pointing into tmp_path (the user's store is never touched).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENTOML_CLI = Path(sys.executable).with_name("bentoml")

# Runs inside the subprocess: load by tag, list, show, register twice, unknown tag.
PROBE = """
import json, sys
from pathlib import Path
import numpy as np
from models.core.preprocess import decode_image
from models.runtime.loader import load_detector
from models.runtime import store
from models.commands import main

exp, images = Path(sys.argv[1]), [decode_image(p)[0] for p in sys.argv[2:]]
by_tag = load_detector("fakelens-detector:latest", backend="onnx", device="cpu")
by_version = load_detector("fakelens-detector:test", backend="torchscript", device="cpu")
out = {
    "tag_path": by_tag.source,
    "tag_probs": by_tag.probabilities(images).tolist(),
    "version_probs": by_version.probabilities(images).tolist(),
    "again": store.register(exp, log=lambda _: None),
    "show": store.show("fakelens-detector:test"),
}
try:
    load_detector("fakelens-detector:nope", device="cpu")
except FileNotFoundError as e:
    out["missing"] = str(e)
print("PROBE" + json.dumps(out))
main(["models", "list"])
"""


def _run(args, home, check=True):
    env = dict(os.environ, BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="True", PYTHONPATH=str(ROOT))
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=check)


@pytest.fixture(scope="module")
def stored(tiny_checkpoint, tmp_path_factory):
    """One `fakelens export` into a private store: (BENTOML_HOME, export folder)."""
    root = tmp_path_factory.mktemp("store")
    home, exp = root / "bentoml", root / "exp"
    done = _run([sys.executable, "-m", "models.commands", "export", str(tiny_checkpoint), "--out", str(exp)], home)
    assert "registered fakelens-detector:test" in done.stdout
    return home, exp


def test_export_registers_and_tags_load(stored, image_folder):
    home, exp = stored

    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    probe = _run([sys.executable, "-c", PROBE, str(exp), *paths], home)
    line = next(x for x in probe.stdout.splitlines() if x.startswith("PROBE"))
    out = json.loads(line[len("PROBE"):])
    assert Path(out["tag_path"]).is_relative_to(home)  # loaded from the store, not the export folder
    assert (Path(out["tag_path"]) / "model.onnx").read_bytes() == (exp / "model.onnx").read_bytes()
    np.testing.assert_allclose(out["tag_probs"], out["version_probs"], rtol=0, atol=1e-4)
    assert out["again"] == "fakelens-detector:test"  # same weights: no duplicate, no error
    assert out["show"]["metadata"]["temperature"] == 1.5
    assert "model.torchscript.pt" in out["show"]["files"]
    assert "not in the BentoML store" in out["missing"] and "fakelens-detector:test" in out["missing"]
    assert "fakelens-detector:test" in probe.stdout.split(line)[1]  # `fakelens models list`

    listed = _run([str(BENTOML_CLI), "models", "list"], home)
    assert "fakelens-detector:test" in listed.stdout


def test_same_version_with_other_weights_is_refused(stored, tiny_checkpoint, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    home = stored[0]
    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    state = load_file(str(other / "model.safetensors"))
    state["head.bias"] = state["head.bias"] + torch.ones_like(state["head.bias"])
    save_file(state, str(other / "model.safetensors"))
    done = _run([sys.executable, "-m", "models.commands", "export", str(other), "--out", str(tmp_path / "b")], home,
                check=False)
    assert done.returncode == 2
    assert "already in the store with different weights" in done.stderr and "--version" in done.stderr
