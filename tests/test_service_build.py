"""`bentoml build` packs the service offline, and the serving settings parse their env vars."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.core.preprocess import ImageError
from service.errors import IMAGE_ERRORS
from service.settings import ServeSettings

REPO = Path(__file__).resolve().parent.parent


def test_settings_round_trip_through_env():
    s = ServeSettings(model="/m", batching=False, max_batch_size=8, api_keys=("a", "b"))
    assert ServeSettings.from_env(s.to_env()) == s


@pytest.mark.parametrize(
    "env,match",
    [({"FAKELENS_MAX_BATCH_SIZE": "1"}, "BATCHING=0"), ({"FAKELENS_MAX_BYTES": "ten"}, "not an integer"),
     ({"FAKELENS_BATCHING": "maybe"}, "1/0")],
)
def test_settings_reject_bad_env(env, match):
    with pytest.raises(ValueError, match=match):
        ServeSettings.from_env(env)


def test_every_image_error_kind_has_a_4xx():
    assert set(IMAGE_ERRORS) == set(ImageError.KINDS)
    assert all(400 <= int(cls.error_code) < 500 for cls in IMAGE_ERRORS.values())


@pytest.mark.slow
def test_bentoml_build_offline(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "PIP_NO_INDEX": "1"}
    bentoml = Path(sys.executable).parent / "bentoml"
    out = subprocess.run([str(bentoml), "build", "--output", "tag"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    tag = out.stdout.strip().split("__tag__:")[-1].strip()
    name, version = tag.split(":")
    src = tmp_path / "home" / "bentos" / name / version / "src"
    assert (src / "service" / "service.py").is_file() and (src / "models" / "runtime" / "detector.py").is_file()
    assert not (src / "tests").exists()
    assert (src / "service" / "static" / "index.html").is_file()  # the page ships with the service
    reqs = (tmp_path / "home" / "bentos" / name / version / "env" / "python" / "requirements.txt").read_text()
    assert "torch" in reqs and "timm" in reqs
