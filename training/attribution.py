"""The family head: which generator a synthetic picture resembles, fitted after the verdict head.

    model, cfg = fit_attribution(model, cfg, train, val, tokens, views, seed, rule="energy", keep=0.9)

Trained on the fakes whose family is known (training/families.py), on the same block tokens the
verdict head reads (the frozen feature cache, or the adapted backbone's taps), with one plain loop:
zero_grad, forward, class-weighted cross-entropy, backward, optimizer.step(). Then, on the val
split's fakes, combined per picture by the scale policy's rule as the service combines them:
- a softmax temperature (lowest NLL on a grid), so `family_score` reads as a probability;
- the open-set threshold: the energy T * logsumexp(z / T) that `keep` (TrainConfig.family_keep,
  0.9) of val's known-family pictures reach. Below it the answer is "unknown", so a generator the
  head never saw (e.g. the family left out by bench/generalization.py) does not get a confident
  wrong name. Energy, not the
  top softmax probability: on the leave-one-family-out folds it sent 10-15 points more of the
  left-out family to "unknown" at the same val accuracy (docs/quality.md).
The val confusion matrix and the unknown rates go to `cfg.metrics["attribution"]`. The verdict
head, threshold and band are untouched: attribution never changes a verdict.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import torch

from models.core.attribution import UNKNOWN, names, open_set_score, softmax
from models.core.config import AttributionConfig, DetectorConfig
from models.core.dataset import Sample
from models.core.network import FamilyHead
from training.families import family_counts, family_of, trainable_families
from training.feature_bank import head_outputs
from training.scale_rule import picture_rows

log = logging.getLogger("fakelens.train")

TEMPERATURES = tuple(np.round(np.geomspace(0.25, 8.0, 31), 4))
EPOCHS, BATCH, LR, WEIGHT_DECAY = 40, 256, 2e-3, 1e-2

# (samples, view) -> len(samples) x L x D float32 block tokens (view 0: each file's eval crop)
TokenReader = Callable[[list[Sample], int], np.ndarray]


def fit_attribution(model: torch.nn.Module, cfg: DetectorConfig, train: list[Sample], val: list[Sample],
                    tokens: TokenReader, views: int, seed: int, rule: str,
                    keep: float) -> tuple[torch.nn.Module, DetectorConfig]:
    """Attach and fit a family head on `model` (a TapDetector); (model, cfg with attribution).
    Returns them unchanged, with a log line saying why, when the data has fewer than two families."""
    families = trainable_families(train)
    if len(families) < 2:
        log.info("attribution: skipped (families with enough train pictures: %s; fakes by family: %s)",
                 list(families), family_counts(train))
        return model, cfg
    index = {f: i for i, f in enumerate(families)}
    fit = [s for s in train if family_of(s) in index]
    x = np.concatenate([tokens(fit, v) for v in range(views + 1)])
    y = np.tile([index[family_of(s)] for s in fit], views + 1)
    head = train_family_head(x, y, len(families), seed)
    model.family_head = head.eval()

    known = [s for s in val if family_of(s) in index]
    others = [s for s in val if s.label == 1 and family_of(s) not in index]
    logits, pictures = picture_family_logits(model, known, tokens, cfg)
    truth = np.array([index[family_of(s)] for s in pictures], dtype=int)
    temperature, threshold = calibrate_families(logits, truth, rule, keep)
    att = AttributionConfig(families, rule=rule, threshold=threshold, temperature=temperature)
    report = val_report(att, logits, truth)
    if others:
        other_logits, _ = picture_family_logits(model, others, tokens, cfg)
        report["val_unknown_rate_no_family"] = float(np.mean([n == UNKNOWN for n in names(other_logits, att)]))
        report["val_no_family_pictures"] = len(other_logits)
    report["train_pictures"] = family_counts(fit)
    log.info("attribution: %d families %s; val accuracy %.3f, known named %.3f, %s threshold %.3f",
             len(families), list(families), report["val_accuracy_named"], report["val_named_rate"], rule, threshold)
    cfg = dataclasses.replace(cfg, attribution=att, metrics={**cfg.metrics, "attribution": report})
    return model, cfg


def train_family_head(x: np.ndarray, y: np.ndarray, n_families: int, seed: int) -> FamilyHead:
    """Cross-entropy with classes weighted by 1/count: a family of 30 pictures counts as much as
    one of 600. Deterministic for a seed (a pure function of its inputs, so reruns agree)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = FamilyHead(x.shape[1], x.shape[2], n_families)
    counts = np.bincount(y, minlength=n_families).astype(np.float64)
    weight = torch.tensor(counts.sum() / (n_families * np.maximum(counts, 1)), dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    optimizer = torch.optim.AdamW(head.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    head.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(order), BATCH):
            batch = order[i : i + BATCH]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(head(xt[batch]), yt[batch])
            loss.backward()
            optimizer.step()
    return head.eval()


def picture_family_logits(model: torch.nn.Module, samples: list[Sample], tokens: TokenReader,
                          cfg: DetectorConfig) -> tuple[np.ndarray, list[Sample]]:
    """Family logits per picture, its files' view-0 logits combined as the service combines the
    views of one picture ((1 - w) * resized + w * native), and each picture's sample."""
    if not samples:
        return np.zeros((0, len(model.family_head.out.bias))), []
    z = head_outputs(model.family_head, tokens(samples, 0))
    return picture_rows(samples, z, cfg.preprocess.native_weight)


def calibrate_families(logits: np.ndarray, truth: np.ndarray, rule: str, keep: float) -> tuple[float, float]:
    """(softmax temperature with the lowest val NLL, the rule's threshold keeping `keep` of val named)."""
    if len(logits) == 0:
        return 1.0, 0.0 if rule == "max-softmax" else -np.inf

    def nll(t: float) -> float:
        p = softmax(logits, t)[np.arange(len(truth)), truth]
        return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0))))

    temperature = float(min(TEMPERATURES, key=nll))
    scores = open_set_score(logits, rule, temperature)
    return temperature, float(np.quantile(scores, 1.0 - keep))


def val_report(att: AttributionConfig, logits: np.ndarray, truth: np.ndarray) -> dict:
    """Confusion matrix (rows: true family, columns: answer incl. unknown) and rates on val pictures."""
    answers = names(logits, att)
    columns = [*att.families, UNKNOWN]
    matrix = np.zeros((len(att.families), len(columns)), dtype=int)
    for t, a in zip(truth, answers, strict=True):
        matrix[int(t), columns.index(a)] += 1
    named = matrix[:, :-1].sum()
    return {
        "families": list(att.families),
        "val_pictures": int(len(truth)),
        "val_confusion": {"rows": list(att.families), "columns": columns, "counts": matrix.tolist()},
        "val_accuracy_named": float(np.trace(matrix[:, :-1]) / named) if named else 0.0,
        "val_named_rate": float(named / max(len(truth), 1)),
    }


def attribution_report(samples: list[Sample], answers: list[dict], families: tuple[str, ...]) -> dict:
    """The served answers against the truth (training/families.py), for `fakelens evaluate`:
    a confusion matrix over the fakes (rows: true family, or "(no known family)"; columns: the
    families, "unknown", and "real" where the verdict made the family null), per-row rates, and
    how often a named known-family fake got the right name."""
    columns = [*families, UNKNOWN, "real"]
    rows: dict[str, dict[str, int]] = {}
    for s, a in zip(samples, answers, strict=True):
        if s.label != 1:
            continue
        truth = family_of(s) or "(no known family)"
        answer = a["family"] or "real"
        rows.setdefault(truth, dict.fromkeys(columns, 0))[answer] += 1
    named = [(t, a) for t, row in rows.items() for a, n in row.items() for _ in range(n)
             if t in families and a in families]
    return {
        "columns": columns,
        "rows": {t: rows[t] for t in sorted(rows)},
        "unknown_rate": {t: row[UNKNOWN] / max(sum(row.values()), 1) for t, row in sorted(rows.items())},
        "named_accuracy": float(np.mean([t == a for t, a in named])) if named else None,
        "n_named": len(named),
    }
