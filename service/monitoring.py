"""What the service exports for drift monitoring, beside BentoML's own HTTP metrics at /metrics.

- `fakelens_score` (histogram): the calibrated score of every image answered by /detect and
  /detect_batch, in the fixed buckets of models/core/drift.py, so a scrape compares directly with a
  `fakelens score` file or the reference stored in the model (`fakelens drift`, docs/drift.md).
- `fakelens_verdicts_total` (counter): the verdicts answered (`real`, `uncertain`, `synthetic`).
- `fakelens_families_total` (counter): the generator families answered (`unknown` included) by a
  model with a family head; answers judged real carry none and are not counted.

Both are labelled with the model's name and version, so a rollout shows as a new series rather
than as drift. Face mode, /explain and /detect_video are not recorded: a max over faces or a
frame aggregate has another distribution than the one the reference describes.
"""

from __future__ import annotations

import bentoml

from models.core.drift import FAMILIES, HISTOGRAM, METRIC_LABELS, SCORE_BUCKETS, VERDICTS

SCORES = bentoml.metrics.Histogram(
    name=HISTOGRAM,
    documentation="Calibrated synthetic-probability of each image answered by /detect and /detect_batch",
    labelnames=METRIC_LABELS,
    buckets=SCORE_BUCKETS,
)
VERDICT_COUNTS = bentoml.metrics.Counter(
    name=VERDICTS,
    documentation="Verdicts answered by /detect and /detect_batch (real, uncertain, synthetic)",
    labelnames=(*METRIC_LABELS, "verdict"),
)
FAMILY_COUNTS = bentoml.metrics.Counter(
    name=FAMILIES,
    documentation="Generator families answered by /detect and /detect_batch (unknown included; none for real)",
    labelnames=(*METRIC_LABELS, "family"),
)


def record(answer: dict) -> None:
    """Count one answer of the verdict endpoints; error answers (no score) are left out."""
    score = answer.get("score")
    if score is None or "label" not in answer:
        return
    model = answer.get("model") or {}
    series = {"model_name": str(model.get("name", "")), "model_version": str(model.get("version", ""))}
    SCORES.labels(**series).observe(float(score))
    VERDICT_COUNTS.labels(**series, verdict=answer["label"]).inc()
    if answer.get("family"):
        FAMILY_COUNTS.labels(**series, family=str(answer["family"])).inc()
