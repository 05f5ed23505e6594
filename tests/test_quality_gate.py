"""The quality gate (issue 18): the shipped default detector, scored by `fakelens score` on the shared
datasets' held-back test splits, keeps its recorded quality; and it keeps its verdict on upscaled
fakes (issue 17). Skipped, saying why, where ../shared/datasets is not beside the repository; the
gate's own rules are tested on made-up scores everywhere."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.quality_gate import Limits, failures, measure, recorded

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
TEST_SETS = ("realfake-dev", "realfake-train", "realfake-native")
needs_shared = pytest.mark.skipif(
    not all((SHARED / d / "manifest.csv").is_file() for d in TEST_SETS),
    reason=f"the quality gate needs the shared datasets at {SHARED} (present in CI and on the project's machines); "
           "the rest of the suite does not")


def made_up_scores(n: int = 4000, seed: int = 0):
    """Scores of a good, calibrated detector: each label drawn with the probability its score says."""
    rng = np.random.default_rng(seed)
    p = np.r_[rng.beta(0.5, 12, n // 2), rng.beta(12, 0.5, n // 2)]
    y = (rng.random(n) < p).astype(int)
    sources = np.where(y == 1, "sd", np.where(np.arange(n) % 2 == 0, "people", "portraits"))
    return y, p, sources


def verdicts(p: np.ndarray, threshold: float) -> np.ndarray:
    return np.where(p >= threshold, "synthetic", "real")


def test_the_gate_passes_what_was_recorded_and_fails_a_broken_threshold():
    y, p, sources = made_up_scores()
    good = measure(y, p, np.full(y.size, 0.5), verdicts(p, 0.5), sources)
    want = {**{k: good[k] for k in ("auc", "fpr", "tpr", "real_called_synthetic", "fake_called_synthetic")},
            "tolerance": 0.02}
    assert failures(good, want) == []
    broken = measure(y, p, np.full(y.size, 0.02), verdicts(p, 0.02), sources)  # a threshold shipped wrong
    found = failures(broken, want)
    assert any("real source people" in f and "FPR" in f for f in found)
    assert any(f.startswith("fpr ") and "drifted" in f for f in found)
    # a detector that ranks well but whose probabilities lie fails on calibration alone
    squashed = 0.5 + (p - 0.5) * 0.2
    assert any(f.startswith("ECE") for f in failures(measure(y, squashed, np.full(y.size, 0.5),
                                                             verdicts(squashed, 0.5), sources), {}))
    assert any(f.startswith("AUC") for f in failures(measure(y, 1 - p, np.full(y.size, 0.5),
                                                             verdicts(1 - p, 0.5), sources), {}))
    assert Limits().min_auc == 0.98 and Limits().max_source_fpr == 0.05
    # attribution: a head that names the wrong family fails, one that drifts to "unknown" too
    right = [("sd15", "sd15")] * 95 + [("gan", "gan")] * 5 + [("sd15", "unknown")] * 10 + [(None, "sd15")] * 20
    wrong = [("sd15", "gpt-4o")] * 95 + [("gan", "gan")] * 5 + [("sd15", "unknown")] * 10
    vague = [("sd15", "sd15")] * 50 + [("sd15", "unknown")] * 60
    base = measure(y, p, np.full(y.size, 0.5), verdicts(p, 0.5), sources, right)
    assert base["family_right"] == 1.0 and base["family_unknown"] == pytest.approx(10 / 110)
    with_family = {**want, "family_right": 1.0, "family_unknown": base["family_unknown"]}
    assert failures(base, with_family) == []
    assert any(f.startswith("family_right") for f in failures(
        measure(y, p, np.full(y.size, 0.5), verdicts(p, 0.5), sources, wrong), with_family))
    assert any(f.startswith("family_unknown") and "drifted" in f for f in failures(
        measure(y, p, np.full(y.size, 0.5), verdicts(p, 0.5), sources, vague), with_family))


def test_the_recorded_figures_are_in_the_docs():
    want = recorded()
    assert {"auc", "fpr", "tpr", "tolerance"} <= set(want)


def held_back(split: str = "test"):
    from models.core.dataset import list_samples

    return list_samples(",".join(str(SHARED / d / "manifest.csv") for d in TEST_SETS), split=split)


@needs_shared
@pytest.mark.slow
@pytest.mark.timeout(1800)  # a fresh machine fetches CLIP and exports the detector once first
def test_shipped_detector_keeps_its_recorded_quality(tmp_path):
    samples = held_back()
    listing = tmp_path / "test-split.txt"
    listing.write_text("\n".join(s.path for s in samples) + "\n")
    out = tmp_path / "scores.jsonl"
    fakelens = Path(sys.executable).parent / "fakelens"  # the console script a user runs
    done = subprocess.run([str(fakelens), "score", str(listing), "-o", str(out)], capture_output=True, text=True,
                          timeout=1500)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {os.path.normpath(r["path"]): r for r in map(json.loads, out.read_text().splitlines())}
    scored = [(s, rows[os.path.normpath(s.path)]) for s in samples if not rows[os.path.normpath(s.path)].get("error")]
    assert len(scored) == len(samples)
    from training.families import family_of

    got = measure([s.label for s, _ in scored], [r["score"] for _, r in scored], [r["threshold"] for _, r in scored],
                  [r["label"] for _, r in scored], [s.source for s, _ in scored],
                  [(family_of(s), r["family"]) for s, r in scored])
    problems = failures(got, recorded())
    assert not problems, f"quality gate: {problems}; measured {json.dumps(got)[:1500]}"


def upscaled(img: Image.Image, k: int) -> Image.Image:
    big = img.resize((img.width * k, img.height * k), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=95)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@needs_shared
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_shipped_detector_keeps_its_verdict_on_upscaled_fakes():
    from models.core.preprocess import decode_image
    from models.core.verdict import label_for
    from models.runtime.loader import load_detector

    det = load_detector("default")
    fakes = [s for s in held_back() if s.label == 1 and ("sd-cheatsheet" in s.source or "gan-detector" in s.source)
             and s.view != "native"]
    picked = sorted(fakes, key=lambda s: s.path)[:: max(1, len(fakes) // 12)][:12]
    originals = [decode_image(s.path)[0] for s in picked]
    base = det.probabilities(originals)
    labels = [label_for(p, det.config) for p in base]
    # The upscale is saved as JPEG q95 (what people post); a render whose score moves by a plain
    # q95 re-save at its own size cannot be held to 0.05 through upscaling either.
    stable = np.abs(det.probabilities([upscaled(img, 1) for img in originals]) - base) <= 0.05
    assert stable.sum() >= len(picked) - 2
    for k in (2, 4, 6):
        probs = det.probabilities([upscaled(img, k) for img in originals])
        moved = np.abs(probs - base)
        assert moved[stable].max() <= 0.05, (k, np.round(base, 3).tolist(), np.round(probs, 3).tolist())
        assert [label_for(p, det.config) for p in probs] == labels
    four = det.probabilities([upscaled(img, 4) for img in originals])
    kept = [label_for(p, det.config) for p, was in zip(four, labels, strict=True) if was == "synthetic"]
    assert kept and all(v == "synthetic" for v in kept)
