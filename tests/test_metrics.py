"""models.core.metrics against scikit-learn on random data with ties, plus hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from models.core import metrics as M


def _random_cases(count: int = 60):
    rng = np.random.default_rng(0)
    for _ in range(count):
        n = int(rng.integers(4, 80))
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)  # both classes present
        # Coarse scores force many ties, within and across classes.
        s = np.round(rng.random(n) + 0.4 * y * rng.random(), 1)
        yield y, s


def test_auc_and_ap_match_sklearn_with_ties():
    for y, s in _random_cases():
        assert M.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert M.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_eer_and_tpr_at_fpr_match_sklearn_roc_curve():
    for y, s in _random_cases():
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        # EER: where the piecewise-linear ROC meets FPR = FNR, i.e. fpr + tpr - 1 = 0.
        assert M.equal_error_rate(y, s) == pytest.approx(np.interp(0.0, fpr + tpr - 1, fpr), abs=1e-12)
        for target in (0.01, 0.05, 0.2):
            assert M.tpr_at_fpr(y, s, target) == pytest.approx(tpr[fpr <= target].max(), abs=1e-12)


def test_hand_computed_small_case():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    # pairs (pos > neg): 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3 of 4
    assert M.roc_auc(y, s) == 0.75
    # ranked: 0.8(+) P=1 R=.5, 0.4(-), 0.35(+) P=2/3 R=1 -> AP = .5*1 + .5*2/3
    assert M.average_precision(y, s) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # ROC points (0,0) (0,.5) (.5,.5) (.5,1) (1,1): FPR=FNR=0.5 at (.5,.5)
    assert M.equal_error_rate(y, s) == pytest.approx(0.5)
    assert M.accuracy(y, s, 0.5) == 0.75
    assert M.brier(y, s) == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)


def test_constant_scores_give_chance_auc():
    y = np.array([0, 1, 0, 1, 1])
    assert M.roc_auc(y, np.full(5, 0.3)) == 0.5
    assert M.equal_error_rate(y, np.full(5, 0.3)) == pytest.approx(0.5)


def test_ece_hand_computed():
    # bin [0.2, 0.267): p=.2,.2 with one positive -> |0.2 - 0.5| ; bin [0.933, 1]: p=.95,.95 both positive -> 0.05
    y = np.array([0, 1, 1, 1])
    p = np.array([0.2, 0.2, 0.95, 0.95])
    assert M.ece(y, p) == pytest.approx(0.5 * 0.3 + 0.5 * 0.05)
    assert M.ece(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0


def test_ece_matches_reliability_bins_from_numpy_histogram():
    rng = np.random.default_rng(3)
    p = rng.random(500)
    y = (rng.random(500) < p**2).astype(int)
    counts, edges = np.histogram(p, bins=15, range=(0, 1))
    idx = np.digitize(p, edges[1:-1])
    expected = sum(
        counts[b] / 500 * abs(p[idx == b].mean() - y[idx == b].mean()) for b in range(15) if counts[b]
    )
    assert M.ece(y, p) == pytest.approx(expected)


def test_single_class_is_reported_not_crashed():
    assert math.isnan(M.roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    r = M.binary_report(np.array([1, 1, 1]), np.array([0.2, 0.6, 0.9]), threshold=0.5)
    assert r["auc"] is None and r["eer"] is None and r["tpr_at_fpr"] is None
    assert r["tpr"] == pytest.approx(2 / 3) and r["tnr"] is None and r["accuracy"] == pytest.approx(2 / 3)


def test_group_reports_cover_each_group():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.7, 0.8, 0.3, 0.9])
    groups = ["real", "real", "ganA", "ganA", "diffB"]
    r = M.group_reports(y, p, groups, threshold=0.5)
    assert sorted(r) == ["diffB", "ganA", "real"]
    assert r["real"]["tnr"] == 0.5 and r["real"]["auc"] is None
    assert r["ganA"]["tpr"] == 0.5 and r["diffB"]["n"] == 1


def test_binary_report_keys_and_bad_input():
    y = np.array([0, 1, 0, 1])
    r = M.binary_report(y, np.array([0.1, 0.9, 0.2, 0.6]), 0.5)
    assert r["auc"] == 1.0 and r["accuracy"] == 1.0 and set(r["tpr_at_fpr"]) == {"0.01", "0.05"}
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        M.binary_report(np.array([0, 2]), np.array([0.1, 0.2]), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        M.roc_auc([0, 1], [0.1, float("nan")])
