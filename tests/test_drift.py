"""Score drift (models/core/drift.py, `fakelens drift`): statistics, readers, exit codes, and the
reference stored at calibration. Streams are simulated from a fixed detector's score model
(fast, exact), then written in the scorer's real output formats; one test trains and scores
with a tiny random-weight model end to end."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from models.commands import main
from models.core.config import DetectorConfig
from models.core.drift import (
    N_BINS,
    REFERENCE_KEY,
    SCORE_BUCKETS,
    DriftInputError,
    bucket_counts,
    compare,
    parse_metrics,
    psi,
    read_stream,
    reference_stream,
    stream_from_scores,
    subtract,
)
from models.core.preprocess import calibrated_probability
from models.core.verdict import LABELS, labels_for
from service.writers import COLUMNS, write_table
from training.calibrate import calibrate

N_VAL, N_CURRENT = 2000, 1000


def val_logits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A detector's logits on a half-fake split: reals around -4, fakes around +3."""
    y = (rng.random(n) < 0.5).astype(int)
    return np.where(y == 1, rng.normal(3, 2, n), rng.normal(-4, 1.5, n)), y


@pytest.fixture(scope="module")
def cfg() -> DetectorConfig:
    """A detector calibrated on simulated val logits from two real sources (so it has a band)."""
    rng = np.random.default_rng(0)
    z, y = val_logits(N_VAL, rng)
    groups = np.where(y == 1, "generator", np.where(rng.random(N_VAL) < 0.5, "camera-a", "camera-b"))
    return calibrate(DetectorConfig(version="sim"), z, y, groups)


def scores(cfg: DetectorConfig, seed: int, n: int = N_CURRENT, uncertain: float = 0.0,
           new_source: float = 0.0) -> np.ndarray:
    """Calibrated scores of a stream like val; `uncertain` of it replaced by images inside the
    band, `new_source` of it by a new generator the detector half-recognises."""
    rng = np.random.default_rng(seed)
    z, _ = val_logits(n, rng)
    p = calibrated_probability(z, cfg.temperature)
    low, high = cfg.uncertain_band
    k = int(uncertain * n)
    p[:k] = rng.uniform(low, high, k)
    m = int(new_source * n)
    p[k:k + m] = calibrated_probability(rng.normal(0.0, 1.0, m), cfg.temperature)
    return p


def write_scores(path, p: np.ndarray, cfg: DetectorConfig, errors: int = 0) -> None:
    """Score rows as `fakelens score` writes them (its own writer), plus `errors` error rows."""
    labels = labels_for(p, cfg)
    rows = [{c: None for c in COLUMNS} | {"path": f"img{i}.jpg", "score": float(s), "label": label,
                                          "threshold": cfg.threshold, "model": cfg.name, "model_version": cfg.version,
                                          "reason": "model"}
            for i, (s, label) in enumerate(zip(p, labels, strict=True))]
    rows += [{c: None for c in COLUMNS} | {"path": f"bad{i}.jpg", "error": "truncated: image file is truncated"}
             for i in range(errors)]
    from service.writers import arrow_schema

    write_table(pa.Table.from_pylist(rows, schema=arrow_schema()), path)


def drift(*argv: str) -> int:
    return main(["drift", *map(str, argv)])


# ---- the statistics -------------------------------------------------------------------------


def test_buckets_follow_prometheus_le_rule():
    counts = bucket_counts([0.0, 0.001, 0.0011, 0.5, 0.50001, 1.0])
    assert counts.shape == (N_BINS,) and counts.sum() == 6
    assert counts[0] == 2  # le="0.001" holds 0 and 0.001 itself
    assert counts[1] == 1 and counts[SCORE_BUCKETS.index(0.5)] == 1 and counts[SCORE_BUCKETS.index(0.6)] == 1
    assert counts[SCORE_BUCKETS.index(1.0)] == 1 and counts[-1] == 0  # +Inf stays empty for probabilities


def test_psi_is_zero_for_one_distribution_and_grows_with_shift():
    base = np.array([50, 30, 20, 0], dtype=float)
    assert psi(base, base * 3)[0] == pytest.approx(0.0, abs=1e-12)
    assert psi(base, base)[1] == 3  # a bucket empty on both sides is not used
    assert 0 < psi(base, np.array([45, 30, 25, 0.0]))[0] < psi(base, np.array([20, 30, 50, 0.0]))[0]


@pytest.mark.parametrize("seed", range(1, 6))
def test_a_stream_drawn_from_the_reference_does_not_alert(cfg, seed):
    ref = reference_stream(cfg.metrics[REFERENCE_KEY], "val")
    p = scores(cfg, seed)
    report = compare(ref, stream_from_scores(p, labels_for(p, cfg), "current"))
    assert report.level == "none", "\n".join(report.lines())
    assert not any(f.counts for f in report.findings)


def test_more_uncertain_answers_alert(cfg):
    ref = reference_stream(cfg.metrics[REFERENCE_KEY], "val")
    p = scores(cfg, 7, uncertain=0.15)
    report = compare(ref, stream_from_scores(p, labels_for(p, cfg), "current"))
    assert report.level == "drift", "\n".join(report.lines())
    share = next(f for f in report.findings if f.statistic == "share:uncertain")
    assert share.counts and share.level == "drift" and share.value > 0.10


def test_a_new_source_with_different_scores_alerts(cfg):
    ref = reference_stream(cfg.metrics[REFERENCE_KEY], "val")
    p = scores(cfg, 8, new_source=0.3)
    report = compare(ref, stream_from_scores(p, labels_for(p, cfg), "current"))
    assert report.level == "drift", "\n".join(report.lines())
    found = {f.statistic: f for f in report.findings}
    assert found["psi"].counts and found["psi"].level == "drift"
    assert found["ks"].significant


def test_a_small_stream_cannot_alert_on_noise_and_says_so(cfg):
    ref = reference_stream(cfg.metrics[REFERENCE_KEY], "val")
    p = scores(cfg, 9, n=15)
    report = compare(ref, stream_from_scores(p, labels_for(p, cfg), "tiny"))
    assert report.level == "none"
    assert any("only 15 scores" in note for note in report.notes)


def test_reference_reweighted_to_the_production_mix(cfg):
    """A stream of mostly real photos is a shifted stream against the half-fake val split,
    and not against the same reference reweighted to its mix."""
    rng = np.random.default_rng(10)
    z = rng.normal(-4, 1.5, N_CURRENT)
    z[: N_CURRENT // 10] = rng.normal(3, 2, N_CURRENT // 10)  # 10% fakes
    p = calibrated_probability(z, cfg.temperature)
    current = stream_from_scores(p, labels_for(p, cfg), "production")
    ref = cfg.metrics[REFERENCE_KEY]
    assert compare(reference_stream(ref, "val"), current).level == "drift"
    assert compare(reference_stream(ref, "val", fake_share=0.1), current).level == "none"
    with pytest.raises(DriftInputError, match="between 0 and 1"):
        reference_stream(ref, "val", fake_share=1.5)


# ---- the reference stored at calibration ---------------------------------------------------


def test_calibration_stores_the_val_reference(cfg):
    ref = cfg.metrics[REFERENCE_KEY]
    assert ref["edges"] == list(SCORE_BUCKETS) and ref["split"] == "val"
    assert ref["n"] == N_VAL == sum(ref["counts"]) == sum(ref["verdicts"].values())
    assert ref["by_label"]["real"]["n"] + ref["by_label"]["fake"]["n"] == N_VAL
    assert set(ref["verdicts"]) == set(LABELS) and ref["verdicts"]["uncertain"] > 0
    # the verdicts are those of the fitted band, counted on the calibrated val scores
    z, y = val_logits(N_VAL, np.random.default_rng(0))
    p = calibrated_probability(z, cfg.temperature)
    assert ref["counts"] == [int(c) for c in bucket_counts(p)]
    assert ref["verdicts"] == {v: labels_for(p, cfg).count(v) for v in LABELS}
    # stored as plain JSON in detector.json
    assert DetectorConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).metrics[REFERENCE_KEY] == ref


@pytest.mark.slow
def test_trained_model_ships_its_reference_and_drift_reads_it(demo, tmp_path, capsys):
    """Train a tiny model, score its own val split with `fakelens score`, compare with `fakelens drift`."""
    from models.core.dataset import list_samples
    from tests.test_train import tiny
    from training.train import train

    run = tmp_path / "run"
    train(tiny(demo, run, max_steps=4))
    stored = DetectorConfig.load(run / "best" / "detector.json")
    val = [s for s in list_samples(demo) if s.split == "val"]
    ref = stored.metrics[REFERENCE_KEY]
    assert ref["n"] == len(val) == sum(ref["counts"])
    listing = tmp_path / "val.txt"
    listing.write_text("".join(f"{s.path}\n" for s in val))
    out = tmp_path / "val.jsonl"
    assert main(["score", str(listing), "-o", str(out), "--model", str(run), "--backend", "eager",
                 "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    assert drift(out, "--model", run, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["level"] == "none" and report["current"]["n"] == len(val)
    assert report["reference"]["n"] == len(val)


def test_a_model_without_a_reference_exits_2_saying_how_to_get_one(cfg, tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    old = DetectorConfig.from_dict({**cfg.to_dict(), "metrics": {"val": cfg.metrics["val"]}})
    old.save(folder / "detector.json")
    (folder / "model.safetensors").write_bytes(b"")  # never read: drift reads detector.json only
    current = tmp_path / "current.jsonl"
    write_scores(current, scores(cfg, 11), cfg)
    assert drift(current, "--model", folder) == 2
    err = capsys.readouterr().err
    assert "no stored score reference" in err and "--recalibrate" in err and "fakelens drift REFERENCE CURRENT" in err


def test_current_alone_uses_a_models_reference(cfg, tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    cfg.save(folder / "detector.json")
    (folder / "model.safetensors").write_bytes(b"")
    same, shifted = tmp_path / "same.jsonl", tmp_path / "shifted.jsonl"
    write_scores(same, scores(cfg, 12), cfg)
    write_scores(shifted, scores(cfg, 13, uncertain=0.2), cfg)
    assert drift(same, "--model", folder) == 0
    assert drift(shifted, "--model", folder) == 1
    assert "drift level: DRIFT" in capsys.readouterr().out


def test_default_model_reference_is_read_without_exporting(cfg, tmp_path, monkeypatch, capsys):
    """`fakelens drift CURRENT` reads the shipped detector's detector.json and nothing else."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FAKELENS_CACHE", str(cache))
    current = tmp_path / "current.jsonl"
    write_scores(current, scores(cfg, 14), cfg)
    status = drift(current)
    err = capsys.readouterr().err
    assert not cache.exists()  # no export, no wheel download
    if status == 2:  # the shipped detector predates stored references
        assert "no stored score reference" in err and "default detector" in err
    else:
        assert status in (0, 1)


# ---- files, scrapes and exit codes -------------------------------------------------------------


@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".parquet"])
def test_every_scorer_format_reads_alike_and_skips_error_rows(cfg, tmp_path, ext):
    p = scores(cfg, 15, n=300)
    path = tmp_path / f"scores{ext}"
    write_scores(path, p, cfg, errors=4)
    stream = read_stream(path)
    assert stream.n == 300 and stream.skipped == 4
    np.testing.assert_array_equal(stream.counts, bucket_counts(p))
    np.testing.assert_array_equal(stream.scores, p)
    assert stream.verdicts == {v: float(labels_for(p, cfg).count(v)) for v in LABELS}


def test_drift_a_a_is_0_and_a_clearly_shifted_b_is_1(cfg, tmp_path, capsys):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.parquet", tmp_path / "c.csv"
    write_scores(a, scores(cfg, 16), cfg, errors=3)
    write_scores(b, scores(cfg, 17, new_source=0.3), cfg)
    write_scores(c, scores(cfg, 18), cfg)
    assert drift(a, a) == 0
    assert "drift level: NONE" in capsys.readouterr().out
    assert drift(a, c) == 0  # another sample of the same stream, in another format
    assert drift(a, b) == 1
    captured = capsys.readouterr()
    assert "drift level: DRIFT" in captured.out and "docs/drift.md" in captured.err
    assert drift(a, b, "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["level"] == "drift" and report["current"]["n"] == N_CURRENT
    assert {f["statistic"] for f in report["findings"]} == {"psi", "ks", *(f"share:{v}" for v in LABELS)}


def test_moderate_drift_passes_unless_asked_to_fail(cfg, tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_scores(a, scores(cfg, 19, n=4000), cfg)
    write_scores(b, scores(cfg, 20, n=4000, uncertain=0.07), cfg)  # +7 points of uncertain answers
    assert drift(a, b, "--json") == 0
    assert json.loads(capsys.readouterr().out)["level"] == "moderate"
    assert drift(a, b, "--fail-on", "moderate") == 1


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("broken.jsonl", '{"score": 0.2, "label": "real"}\n{"score": 0.3, "lab\n', "broken.jsonl:2: not a JSON line"),
        ("list.jsonl", "[0.1, 0.2]\n", "list.jsonl:1: a JSON list"),
        ("noscore.jsonl", '{"path": "a.jpg", "label": "real"}\n', "noscore.jsonl:1: the row has no `score`"),
        ("range.jsonl", '{"score": 1.5, "label": "synthetic"}\n', "range.jsonl:1: score 1.5 is not a probability"),
        ("label.jsonl", '{"score": 0.5, "label": "fake"}\n', "label.jsonl:1: label 'fake' is not one of"),
        ("errors.jsonl", '{"score": null, "label": null, "error": "truncated"}\n', "holds no scored rows"),
        ("nocol.csv", "path,label\na.jpg,real\n", "nocol.csv: no `score` column"),
        ("word.csv", "path,score,label\na.jpg,high,real\n", "word.csv:2: score 'high' is not a number"),
        ("junk.parquet", "not parquet at all", "junk.parquet: not a readable Parquet file"),
        ("notes.txt", "hello\n", "notes.txt: unknown format"),
        ("scrape.prom", "# HELP x\nx 1\n", "scrape.prom has no fakelens_score_bucket samples"),
    ],
)
def test_a_malformed_stream_exits_2_with_a_one_line_message(cfg, tmp_path, capsys, name, content, message):
    good = tmp_path / "good.jsonl"
    write_scores(good, scores(cfg, 21, n=50), cfg)
    bad = tmp_path / name
    bad.write_text(content)
    for argv in ((good, bad), (bad, good)):
        assert drift(*argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and err.startswith("fakelens drift: error:") and "\n" not in err


def test_missing_file_and_bad_arguments_exit_2(cfg, tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    write_scores(good, scores(cfg, 22, n=50), cfg)
    assert drift(good, tmp_path / "nope.jsonl") == 2
    assert "nope.jsonl does not exist" in capsys.readouterr().err
    assert drift(good, good, good) == 2
    assert drift(good, good, "--fake-share", "0.5") == 2


def scrape(observations: dict[str, np.ndarray], cfg: DetectorConfig) -> str:
    """A /metrics text with the service's two metrics (same names, labels and buckets as
    service/monitoring.py), one series per model version."""
    registry = CollectorRegistry()
    hist = Histogram("fakelens_score", "scores", ("model_name", "model_version"), buckets=SCORE_BUCKETS,
                     registry=registry)
    count = Counter("fakelens_verdicts", "verdicts", ("model_name", "model_version", "verdict"), registry=registry)
    for version, p in observations.items():
        for s, label in zip(p, labels_for(p, cfg), strict=True):
            hist.labels(cfg.name, version).observe(s)
            count.labels(cfg.name, version, label).inc()
    return generate_latest(registry).decode()


def test_a_metrics_scrape_reads_like_the_score_file(cfg, tmp_path, capsys):
    p = scores(cfg, 23, n=500)
    stream = parse_metrics(scrape({"v1": p}, cfg), "scrape")
    np.testing.assert_array_equal(stream.counts, bucket_counts(p))
    assert stream.verdicts == {v: float(labels_for(p, cfg).count(v)) for v in LABELS}
    (tmp_path / "metrics.txt").write_text(scrape({"v1": p}, cfg))
    jsonl = tmp_path / "same.jsonl"
    write_scores(jsonl, p, cfg)
    assert drift(jsonl, tmp_path / "metrics.txt", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["findings"][0]["value"] == pytest.approx(0.0, abs=1e-12)  # identical buckets
    assert "on buckets" in report["findings"][1]["detail"]


def test_a_scrape_with_several_versions_needs_one_picked(cfg, tmp_path, capsys):
    text = scrape({"v1": scores(cfg, 24, n=300), "v2": scores(cfg, 25, n=300, new_source=0.5)}, cfg)
    (tmp_path / "m.prom").write_text(text)
    with pytest.raises(DriftInputError, match="several model versions"):
        parse_metrics(text, "m.prom")
    assert parse_metrics(text, "m.prom", "v2").n == 300
    ref = tmp_path / "ref.jsonl"
    write_scores(ref, scores(cfg, 26), cfg)
    assert drift(ref, tmp_path / "m.prom", "--model-version", "v1") == 0
    assert drift(ref, tmp_path / "m.prom", "--model-version", "v2") == 1


def test_since_compares_the_window_between_two_scrapes(cfg, tmp_path):
    early, late = scores(cfg, 27, n=400), scores(cfg, 28, n=600, uncertain=0.3)
    first, second = tmp_path / "first.prom", tmp_path / "second.prom"
    first.write_text(scrape({"v1": early}, cfg))
    second.write_text(scrape({"v1": np.concatenate([early, late])}, cfg))
    ref = tmp_path / "ref.jsonl"
    write_scores(ref, early, cfg)
    assert drift(ref, second, "--since", first) == 1
    assert drift(ref, first, "--since", second) == 2  # counts went down: not the same run


def test_a_file_mixing_model_versions_needs_one_picked(cfg, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_scores(a, scores(cfg, 29, n=300), cfg)
    write_scores(b, scores(cfg, 30, n=200), DetectorConfig.from_dict({**cfg.to_dict(), "version": "other"}))
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(a.read_text() + b.read_text())
    with pytest.raises(DriftInputError, match="mixes model versions"):
        read_stream(mixed)
    assert read_stream(mixed, "other").n == 200
    assert drift(a, mixed, "--model-version", "sim") == 0


# ---- generator families -----------------------------------------------------------------------


def family_answers(p: np.ndarray, cfg: DetectorConfig, seed: int, unknown: float) -> list:
    """A family for every answer not judged real: `unknown` with probability `unknown`, else one of three."""
    rng = np.random.default_rng(seed)
    return [None if label == "real" else ("unknown" if rng.random() < unknown else ["sd15", "gpt-4o", "gan"][i % 3])
            for i, label in enumerate(labels_for(p, cfg))]


def write_family_scores(path, p: np.ndarray, cfg: DetectorConfig, families: list) -> None:
    from service.writers import arrow_schema

    rows = [{c: None for c in COLUMNS} | {"path": f"img{i}.jpg", "score": float(s), "label": label, "family": f,
                                          "family_score": None if f is None else 0.9, "threshold": cfg.threshold,
                                          "model": cfg.name, "model_version": cfg.version, "reason": "model"}
            for i, (s, label, f) in enumerate(zip(p, labels_for(p, cfg), families, strict=True))]
    write_table(pa.Table.from_pylist(rows, schema=arrow_schema()), path)


def test_a_rising_unknown_family_share_alerts_while_the_scores_stay_put(cfg, tmp_path, capsys):
    """The same scores and verdicts, but a third of the fakes now look like no known family: a new
    generator entering the stream shows in `family:unknown` alone."""
    p = scores(cfg, 40)
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.csv", tmp_path / "c.parquet"
    write_family_scores(a, p, cfg, family_answers(p, cfg, 1, unknown=0.05))
    write_family_scores(b, p, cfg, family_answers(p, cfg, 2, unknown=0.05))
    write_family_scores(c, p, cfg, family_answers(p, cfg, 3, unknown=0.35))
    assert drift(a, b) == 0
    capsys.readouterr()
    assert drift(a, c, "--json") == 1
    report = json.loads(capsys.readouterr().out)
    by = {f["statistic"]: f for f in report["findings"]}
    assert by["family:unknown"]["level"] == "drift" and by["family:unknown"]["significant"]
    assert by["family:unknown"]["value"] == pytest.approx(0.3, abs=0.05)
    assert by["psi"]["value"] == pytest.approx(0.0, abs=1e-12)  # the scores did not move
    assert report["current"]["family_shares"]["unknown"] > 0.3


def test_family_shares_are_compared_only_where_both_streams_have_them(cfg, tmp_path, capsys):
    p = scores(cfg, 41)
    with_f, without = tmp_path / "f.jsonl", tmp_path / "plain.jsonl"
    write_family_scores(with_f, p, cfg, family_answers(p, cfg, 4, unknown=0.1))
    write_scores(without, p, cfg)
    assert drift(without, with_f, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert not any(f["statistic"].startswith("family:") for f in report["findings"])
    assert any("family shares not compared" in n for n in report["notes"])


def test_a_scrape_carries_the_family_counter(cfg):
    registry = CollectorRegistry()
    hist = Histogram("fakelens_score", "scores", ("model_name", "model_version"), buckets=SCORE_BUCKETS,
                     registry=registry)
    fam = Counter("fakelens_families", "families", ("model_name", "model_version", "family"), registry=registry)
    p = scores(cfg, 42, n=300)
    answers = family_answers(p, cfg, 5, unknown=0.2)
    for s, f in zip(p, answers, strict=True):
        hist.labels(cfg.name, "v1").observe(s)
        if f:
            fam.labels(cfg.name, "v1", f).inc()
    early = parse_metrics(generate_latest(registry).decode(), "early")
    for _ in range(10):
        fam.labels(cfg.name, "v1", "unknown").inc()
        hist.labels(cfg.name, "v1").observe(0.9)
    later = parse_metrics(generate_latest(registry).decode(), "later")
    want = {f: float(answers.count(f)) for f in set(answers) if f}
    assert early.families == want
    assert subtract(later, early).families == {"unknown": 10.0}
