"""Score drift: is the stream a detector sees still the stream it was calibrated on?

One module shared by training (the reference stored at calibration), the service (the
Prometheus histogram's bucket edges) and `fakelens drift` (readers and the comparison):

    ref = reference_stream(cfg.metrics["score_reference"], "val split")   # or read_stream("old.jsonl")
    report = compare(ref, read_stream("scores.jsonl"))                    # or a /metrics scrape
    report.level          # "none" | "moderate" | "drift"

A stream is reduced to the counts of its calibrated scores in SCORE_BUCKETS (the same
fixed buckets the service's histogram uses, so a file and a scrape compare alike) and the
counts of its verdicts. Three statistics compare two streams, each against documented
effect-size levels (`Levels`, docs/drift.md):

- PSI, the population stability index over the buckets: sum (c - r) * ln(c / r).
- KS, the largest gap between the two cumulative score distributions (exact when both
  streams carry their scores, else on the bucket edges, where it can only be smaller).
- The shift of each verdict's share (`real`, `uncertain`, `synthetic`), in points.
- Where both streams carry generator families (score rows' `family`, the service's
  `fakelens_families_total`): the shift of each family's share among the attributed answers,
  `unknown` included. A rising `unknown` share is a generator the model never saw entering
  the stream.

A level above "none" counts only when the statistic is also beyond sampling noise at
p < 0.001 (chi-square for PSI, the two-sample KS bound, a two-proportion z-test for the
shares): a small stream cannot alert on luck, and a huge one cannot alert on a shift too
small to matter.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.core.verdict import LABELS, labels_for

# Upper bucket edges (Prometheus `le`), symmetric around 0.5 on a roughly logit scale: a
# calibrated detector puts most images near 0 or 1, where uniform 0.05-wide buckets would
# lump most of the mass into two buckets and hide a shift between 0.001 and 0.05.
# Changing them invalidates every stored reference and every scrape taken before: don't.
SCORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5,
                 0.6, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99, 0.995, 0.9975, 0.999, 1.0)
N_BINS = len(SCORE_BUCKETS) + 1  # plus Prometheus' +Inf bucket (always empty for a probability)
HISTOGRAM = "fakelens_score"  # exported as fakelens_score_bucket / _count / _sum
VERDICTS = "fakelens_verdicts"  # exported as fakelens_verdicts_total{verdict=...}
FAMILIES = "fakelens_families"  # exported as fakelens_families_total{family=...} (attributed answers only)
METRIC_LABELS = ("model_name", "model_version")
REFERENCE_KEY = "score_reference"  # DetectorConfig.metrics[REFERENCE_KEY]
LEVEL_ORDER = ("none", "moderate", "drift")
FEW_SCORES = 200  # below this a stream can only show large drift (the report says so)
ROW_FORMATS = (".jsonl", ".csv", ".parquet")


class DriftInputError(ValueError):
    """A stream or reference that cannot be read; the message names the file and what to do.
    (A ValueError, so the `fakelens` dispatcher exits 2 with it.)"""


@dataclass(frozen=True)
class Levels:
    """Effect sizes at which a statistic reaches each level: (moderate, drift).

    PSI 0.1 / 0.25 is the credit-scoring convention (Siddiqi 2006, "Credit Risk Scorecards")
    that most model-monitoring tools adopted: below 0.1 the populations are considered the
    same. KS 0.1 / 0.2: a tenth (a fifth) of the images moved past some score. Shares 5 / 10
    points: the uncertain band is fitted to hold a few percent of val images, so 5 more
    points of `uncertain` answers is already a visible change in the reviewers' queue.
    """

    psi: tuple[float, float] = (0.1, 0.25)
    ks: tuple[float, float] = (0.1, 0.2)
    share: tuple[float, float] = (0.05, 0.10)
    alpha: float = 0.001  # significance a statistic must also reach to count


@dataclass(frozen=True, eq=False)
class Stream:
    """One score stream reduced to what drift compares: bucket counts (len N_BINS), verdict
    counts, and the raw scores when the source has them (files; not scrapes or references).
    Counts are floats: a reference reweighted to another real/fake mix has fractional ones."""

    name: str
    counts: np.ndarray
    verdicts: dict[str, float]
    scores: np.ndarray | None = None
    skipped: int = 0  # error rows (or unscored rows) left out
    # family answer -> count, over the answers that carry a family (not `real`); empty: not recorded
    families: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> float:
        return float(self.counts.sum())

    @property
    def n_verdicts(self) -> float:
        return float(sum(self.verdicts.values()))

    def shares(self) -> dict[str, float]:
        n = self.n_verdicts
        return {v: (self.verdicts.get(v, 0.0) / n if n else 0.0) for v in LABELS}

    def family_shares(self) -> dict[str, float]:
        n = sum(self.families.values())
        return {f: (c / n if n else 0.0) for f, c in sorted(self.families.items())}


@dataclass(frozen=True)
class Finding:
    statistic: str  # "psi", "ks", "share:real", "share:uncertain", "share:synthetic", "family:<name>"
    value: float  # PSI, KS distance, or the share's change (current - reference, a fraction)
    level: str  # the effect-size level, before significance
    significant: bool  # beyond sampling noise at Levels.alpha
    detail: str

    @property
    def counts(self) -> bool:
        return self.significant and self.level != "none"


@dataclass(frozen=True)
class DriftReport:
    reference: Stream
    current: Stream
    findings: tuple[Finding, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def level(self) -> str:
        """The highest level among the significant findings."""
        found = [f.level for f in self.findings if f.counts]
        return max(found, key=LEVEL_ORDER.index, default="none")

    def to_dict(self) -> dict[str, Any]:
        def side(s: Stream) -> dict[str, Any]:
            return {"name": s.name, "n": s.n, "skipped": s.skipped, "shares": s.shares(),
                    "family_shares": s.family_shares()}

        return {
            "level": self.level,
            "reference": side(self.reference),
            "current": side(self.current),
            "findings": [{"statistic": f.statistic, "value": f.value, "level": f.level,
                          "significant": f.significant, "detail": f.detail} for f in self.findings],
            "notes": list(self.notes),
        }

    def lines(self) -> list[str]:
        ref, cur = self.reference, self.current
        out = [f"drift level: {self.level.upper()}",
               f"reference: {ref.name} ({ref.n:.0f} scores)",
               f"current:   {cur.name} ({cur.n:.0f} scores" + (f", {cur.skipped} rows skipped)" if cur.skipped
                                                                 else ")")]
        for f in self.findings:
            mark = "" if f.counts else "  (within noise)" if f.level != "none" else ""
            out.append(f"  {f.statistic:<16} {f.level:<9} {f.detail}{mark}")
        out += [f"note: {n}" for n in self.notes]
        return out


# ---- reducing scores ---------------------------------------------------------------------


def bucket_counts(scores) -> np.ndarray:
    """Counts per bucket with Prometheus' rule: bucket i holds edges[i-1] < s <= edges[i]."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    return np.bincount(np.searchsorted(SCORE_BUCKETS, s, side="left"), minlength=N_BINS).astype(np.float64)


def verdict_counts(labels) -> dict[str, float]:
    found = list(labels)
    return {v: float(sum(1 for label in found if label == v)) for v in LABELS}


def stream_from_scores(scores, labels, name: str, skipped: int = 0, families=None) -> Stream:
    """`families`: each row's family answer (None where it has none: real, or no family head)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    found: dict[str, float] = {}
    for f in families or []:
        if f:
            found[str(f)] = found.get(str(f), 0.0) + 1.0
    return Stream(name=name, counts=bucket_counts(s), verdicts=verdict_counts(labels), scores=s, skipped=skipped,
                  families=found)


def reference_from_validation(probs, labels, cfg) -> dict[str, Any]:
    """What calibration stores as metrics["score_reference"]: the bucket and verdict counts of
    the val split's calibrated scores under cfg's (already fitted) threshold and band, overall
    and per true label (so `fakelens drift --fake-share` can reweight it to another mix)."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    verdicts = np.asarray(labels_for(p, cfg))

    def part(mask: np.ndarray) -> dict[str, Any]:
        return {"n": int(mask.sum()), "counts": [int(c) for c in bucket_counts(p[mask])],
                "verdicts": {v: int(np.sum(verdicts[mask] == v)) for v in LABELS}}

    return {"edges": list(SCORE_BUCKETS), "split": "val", **part(np.ones(p.shape, bool)),
            "by_label": {"real": part(y == 0), "fake": part(y == 1)}}


def reference_stream(ref: dict[str, Any] | None, name: str, fake_share: float | None = None) -> Stream:
    """The Stream of a stored reference; fake_share reweights it to that share of fakes."""
    if not ref:
        raise DriftInputError(f"{name} has no stored score reference (metrics.{REFERENCE_KEY}); recalibrate it "
                              "(`fakelens evaluate MODEL --data DATA --recalibrate`, or retrain), or pass a "
                              "reference stream: fakelens drift REFERENCE CURRENT")
    try:
        if [float(e) for e in ref["edges"]] != list(SCORE_BUCKETS):
            raise DriftInputError(f"{name}'s score reference uses other buckets than this fakelens; recalibrate "
                                  "it with this version, or pass a reference stream")

        def stream(part: dict[str, Any]) -> Stream:
            counts = np.asarray(part["counts"], dtype=np.float64)
            if counts.shape != (N_BINS,):
                raise DriftInputError(f"{name}'s score reference has {counts.size} counts, not {N_BINS}")
            return Stream(name, counts, {v: float(part["verdicts"].get(v, 0)) for v in LABELS})

        if fake_share is None:
            return stream(ref)
        real, fake = stream(ref["by_label"]["real"]), stream(ref["by_label"]["fake"])
    except (KeyError, TypeError) as e:
        raise DriftInputError(f"{name}'s score reference is malformed (missing {e}); recalibrate it") from None
    if not 0.0 <= fake_share <= 1.0:
        raise DriftInputError(f"--fake-share {fake_share} must be between 0 and 1")
    if (fake_share > 0 and not fake.n) or (fake_share < 1 and not real.n):
        raise DriftInputError(f"{name}'s val split lacks the images to reweight to fake share {fake_share}")
    w = {"real": 1.0 - fake_share, "fake": fake_share}
    # Effective size of a weighted mix of two samples (Kish): what the noise tests may assume.
    n_eff = 1.0 / sum(w[k] ** 2 / s.n for k, s in (("real", real), ("fake", fake)) if w[k] > 0)
    counts = sum(w[k] * s.counts / s.n for k, s in (("real", real), ("fake", fake)) if w[k] > 0) * n_eff
    verdicts = {v: n_eff * sum(w[k] * s.verdicts[v] / s.n_verdicts for k, s in (("real", real), ("fake", fake))
                               if w[k] > 0) for v in LABELS}
    return Stream(f"{name} reweighted to {fake_share:.0%} fakes", counts, verdicts)


# ---- statistics ---------------------------------------------------------------------------


def psi(reference: np.ndarray, current: np.ndarray) -> tuple[float, int]:
    """(population stability index, buckets used). Buckets empty in both streams are dropped;
    a bucket empty on one side only counts as half an image there, so it gives a large but
    finite term instead of infinity (and streams with the same shares still give exactly 0)."""
    r, c = np.asarray(reference, np.float64), np.asarray(current, np.float64)
    used = (r + c) > 0

    def shares(counts: np.ndarray) -> np.ndarray:
        padded = np.where(counts > 0, counts, 0.5)
        return padded / padded.sum()

    pr, pc = shares(r[used]), shares(c[used])
    return float(np.sum((pc - pr) * np.log(pc / pr))), int(used.sum())


def ks_distance(reference: Stream, current: Stream) -> tuple[float, str]:
    """(largest gap between the cumulative score distributions, "scores" or "buckets")."""
    if reference.scores is not None and current.scores is not None:
        a, b = np.sort(reference.scores), np.sort(current.scores)
        grid = np.concatenate([a, b])
        gap = np.searchsorted(a, grid, side="right") / a.size - np.searchsorted(b, grid, side="right") / b.size
        return float(np.max(np.abs(gap))), "scores"
    ca = np.cumsum(reference.counts) / reference.n
    cb = np.cumsum(current.counts) / current.n
    return float(np.max(np.abs(ca - cb))), "buckets"


def _chi2_quantile(df: int, alpha: float) -> float:
    """Upper alpha quantile of chi-square(df), Wilson-Hilferty (within ~1% for df >= 3; no scipy)."""
    z = _normal_quantile(alpha)
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _normal_quantile(alpha: float) -> float:
    """z with P(Z > z) = alpha, by bisection on erfc (exact enough, no scipy)."""
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(mid / math.sqrt(2)) > alpha:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _level(value: float, cuts: tuple[float, float]) -> str:
    return "drift" if value >= cuts[1] else "moderate" if value >= cuts[0] else "none"


def compare(reference: Stream, current: Stream, levels: Levels = Levels()) -> DriftReport:
    """PSI, KS and verdict-share shifts of `current` against `reference`, each with its level."""
    for s in (reference, current):
        if s.n <= 0:
            raise DriftInputError(f"{s.name} holds no scored rows to compare")
    n_eff = reference.n * current.n / (reference.n + current.n)
    findings = []

    value, used = psi(reference.counts, current.counts)
    # n_eff * PSI is about chi-square(buckets - 1) when both come from one distribution
    floor = _chi2_quantile(max(used - 1, 1), levels.alpha) / n_eff
    findings.append(Finding("psi", value, _level(value, levels.psi), value > floor,
                            f"{value:.3f} (noise up to {floor:.3f}; moderate {levels.psi[0]}, drift {levels.psi[1]})"))

    value, basis = ks_distance(reference, current)
    bound = math.sqrt(-math.log(levels.alpha / 2) / 2) * math.sqrt(1 / reference.n + 1 / current.n)
    findings.append(Finding("ks", value, _level(value, levels.ks), value > bound,
                            f"{value:.3f} on {basis} (noise up to {bound:.3f}; moderate {levels.ks[0]}, "
                            f"drift {levels.ks[1]})"))

    z_crit = _normal_quantile(levels.alpha / 2)
    nr, nc = reference.n_verdicts, current.n_verdicts
    if nr > 0 and nc > 0:
        findings += share_findings("share", reference.shares(), nr, current.shares(), nc, z_crit, levels)
    fr, fc = sum(reference.families.values()), sum(current.families.values())
    if fr > 0 and fc > 0:
        ref_f, cur_f = reference.family_shares(), current.family_shares()
        names = sorted(set(ref_f) | set(cur_f))
        findings += share_findings("family", {f: ref_f.get(f, 0.0) for f in names}, fr,
                                   {f: cur_f.get(f, 0.0) for f in names}, fc, z_crit, levels)
    notes = []
    if (fr > 0) != (fc > 0):
        notes.append("family shares not compared: only one stream records generator families (score rows of a "
                     "model with a family head, or the service's fakelens_families_total)")
    if current.n < FEW_SCORES:
        notes.append(f"{current.name} holds only {current.n:.0f} scores: only a large shift can be told from "
                     f"noise; compare {FEW_SCORES} or more")
    if nr <= 0 or nc <= 0:
        notes.append("verdict shares not compared: one stream has no verdict counts")
    return DriftReport(reference, current, tuple(findings), tuple(notes))


def share_findings(kind: str, ref: dict[str, float], nr: float, cur: dict[str, float], nc: float, z_crit: float,
                   levels: Levels) -> list[Finding]:
    """Each share's shift with its level and a two-proportion z-test (pooled standard error)."""
    out = []
    for key, pr in ref.items():
        pc = cur[key]
        pooled = (pr * nr + pc * nc) / (nr + nc)
        se = math.sqrt(pooled * (1 - pooled) * (1 / nr + 1 / nc))
        delta = pc - pr
        significant = se > 0 and abs(delta) / se > z_crit
        out.append(Finding(f"{kind}:{key}", delta, _level(abs(delta), levels.share), significant,
                           f"{pr:6.1%} -> {pc:6.1%} ({delta * 100:+.1f} points)"))
    return out


# ---- readers ------------------------------------------------------------------------------


def read_stream(source: str | Path, model_version: str | None = None) -> Stream:
    """A stream from a `fakelens score` output (.jsonl, .csv, .parquet), a saved /metrics
    scrape (any other file whose text holds fakelens_score_bucket lines) or a live
    http(s)://HOST/metrics URL. model_version picks one model where the source holds several."""
    text_source = str(source)
    if text_source.startswith(("http://", "https://")):
        return parse_metrics(_fetch(text_source), text_source, model_version)
    path = Path(source)
    if not path.is_file():
        raise DriftInputError(f"{path} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _rows_stream(_parquet_rows(path), str(path), model_version)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DriftInputError(f"{path} is not text: expected a `fakelens score` output (.jsonl, .csv, .parquet) "
                              "or a /metrics scrape") from None
    if suffix == ".jsonl":
        return _rows_stream(_jsonl_rows(text, path), str(path), model_version)
    if suffix == ".csv":
        return _rows_stream(_csv_rows(text, path), str(path), model_version)
    if f"{HISTOGRAM}_bucket" in text or text.lstrip().startswith("# HELP"):
        return parse_metrics(text, str(path), model_version)
    raise DriftInputError(f"{path}: unknown format; expected a `fakelens score` output ({', '.join(ROW_FORMATS)}) "
                          f"or a /metrics scrape with {HISTOGRAM}_bucket lines")


def _fetch(url: str) -> str:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (the user's own URL)
            return response.read().decode("utf-8")
    except (urllib.error.URLError, OSError, UnicodeDecodeError) as e:
        raise DriftInputError(f"could not read {url}: {e}; is the service up, and is this its /metrics?") from None


def _jsonl_rows(text: str, path: Path):
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DriftInputError(f"{path}:{number}: not a JSON line ({e.msg}); is it a `fakelens score` "
                                  "output?") from None
        if not isinstance(row, dict):
            raise DriftInputError(f"{path}:{number}: a JSON {type(row).__name__}, not a score row object")
        yield number, row


def _csv_rows(text: str, path: Path):
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "score" not in reader.fieldnames:
        raise DriftInputError(f"{path}: no `score` column in the header ({reader.fieldnames}); is it a "
                              "`fakelens score` output?")
    for row in reader:
        yield reader.line_num, {k: (v if v != "" else None) for k, v in row.items()}


def _parquet_rows(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        columns = [c for c in ("score", "label", "error", "model_version", "family") if c in schema.names]
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise DriftInputError(f"{path}: not a readable Parquet file ({str(e)[:200]})") from None
    if "score" not in columns:
        raise DriftInputError(f"{path}: no `score` column ({schema.names}); is it a `fakelens score` output?")
    yield from enumerate(table.to_pylist(), 1)


def _rows_stream(rows, name: str, model_version: str | None) -> Stream:
    """Score rows -> Stream. Rows with an `error` (undecodable files) or without a score are
    skipped and counted; a row with a score that is not a probability stops the read."""
    scores, labels, families, versions, skipped = [], [], [], set(), 0
    for number, row in rows:
        if "score" not in row:
            raise DriftInputError(f"{name}:{number}: the row has no `score`; is it a `fakelens score` output?")
        version = row.get("model_version")
        if model_version is not None and version is not None and str(version) != model_version:
            continue
        if row.get("error") or row.get("score") is None:
            skipped += 1
            continue
        try:
            score = float(row["score"])
        except (TypeError, ValueError):
            raise DriftInputError(f"{name}:{number}: score {row['score']!r} is not a number") from None
        if not 0.0 <= score <= 1.0:
            raise DriftInputError(f"{name}:{number}: score {score} is not a probability in [0, 1]")
        label = row.get("label")
        if label not in LABELS:
            raise DriftInputError(f"{name}:{number}: label {label!r} is not one of {', '.join(LABELS)}")
        scores.append(score)
        labels.append(label)
        families.append(row.get("family") or None)
        if version is not None:
            versions.add(str(version))
    if len(versions) > 1:
        raise DriftInputError(f"{name} mixes model versions {sorted(versions)}; pick one (--model-version for "
                              "CURRENT, --reference-version for REFERENCE)")
    if not scores:
        raise DriftInputError(f"{name} holds no scored rows ({skipped} rows skipped for errors)"
                              + (f" for model version {model_version}" if model_version else ""))
    return stream_from_scores(scores, labels, name, skipped, families)


# ---- Prometheus text format -----------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?\s*$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str, name: str, model_version: str | None = None) -> Stream:
    """The score histogram and verdict counters of one model version in a /metrics scrape.
    Counts are cumulative since the service started (subtract an earlier scrape for a window)."""
    buckets: dict[tuple[str, str], dict[float, float]] = {}
    verdicts: dict[tuple[str, str], dict[str, float]] = {}
    families: dict[tuple[str, str], dict[str, float]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            raise DriftInputError(f"{name}:{number}: not a Prometheus sample line: {line[:80]!r}")
        metric, raw_labels, raw_value = match.groups()
        if metric not in (f"{HISTOGRAM}_bucket", f"{VERDICTS}_total", VERDICTS, f"{FAMILIES}_total", FAMILIES):
            continue
        labels = dict(_LABEL.findall(raw_labels or ""))
        try:
            value = float(raw_value)
        except ValueError:
            raise DriftInputError(f"{name}:{number}: value {raw_value!r} is not a number") from None
        key = (labels.get("model_name", ""), labels.get("model_version", ""))
        if metric == f"{HISTOGRAM}_bucket":
            buckets.setdefault(key, {})[float(labels.get("le", "nan").replace("Inf", "inf"))] = value
        elif metric.startswith(FAMILIES):
            families.setdefault(key, {})[labels.get("family", "")] = value
        else:
            verdicts.setdefault(key, {})[labels.get("verdict", "")] = value
    if not buckets:
        raise DriftInputError(f"{name} has no {HISTOGRAM}_bucket samples: is it a fakelens /metrics scrape, and "
                              "has the service answered a /detect since it started?")
    keys = [k for k in buckets if model_version is None or k[1] == model_version]
    if len(keys) != 1:
        seen = ", ".join(f"{n}:{v}" for n, v in sorted(buckets))
        raise DriftInputError(f"{name} holds {'no' if not keys else 'several'} model versions matching "
                              f"({seen}); pick one (--model-version for CURRENT, --reference-version for "
                              "REFERENCE)")
    cumulative = buckets[keys[0]]
    edges = sorted(e for e in cumulative if math.isfinite(e))
    if len(edges) != len(SCORE_BUCKETS) or not np.allclose(edges, SCORE_BUCKETS):
        raise DriftInputError(f"{name}: the {HISTOGRAM} buckets ({edges}) differ from this fakelens's "
                              f"{list(SCORE_BUCKETS)}; compare streams from the same fakelens version")
    running = [cumulative[e] for e in edges] + [cumulative.get(math.inf, cumulative[edges[-1]])]
    counts = np.diff(np.asarray(running, dtype=np.float64), prepend=0.0)
    if (counts < 0).any():
        raise DriftInputError(f"{name}: the {HISTOGRAM} buckets are not cumulative; is the scrape intact?")
    found = verdicts.get(keys[0], {})
    return Stream(f"{name} ({keys[0][0]}:{keys[0][1]})", counts, {v: float(found.get(v, 0.0)) for v in LABELS},
                  families=dict(families.get(keys[0], {})))


def subtract(later: Stream, earlier: Stream) -> Stream:
    """The window between two scrapes of the same service: later minus earlier."""
    counts = later.counts - earlier.counts
    verdicts = {v: later.verdicts[v] - earlier.verdicts[v] for v in LABELS}
    families = {f: later.families.get(f, 0.0) - earlier.families.get(f, 0.0)
                for f in set(later.families) | set(earlier.families)}
    if (counts < 0).any() or min(verdicts.values()) < 0 or min(families.values(), default=0) < 0:
        raise DriftInputError(f"counts went down from {earlier.name} to {later.name}: the service restarted in "
                              "between; take both scrapes from the same run")
    return Stream(f"{later.name} since {earlier.name}", counts, verdicts,
                  families={f: c for f, c in families.items() if c > 0})
