"""Generator attribution of a detector on the held-back test splits: the confusion matrix.

    python -m bench.attribution [--model models/default]

Every test-split fake of the shared datasets (realfake-dev's test, realfake-train's held-back
val, realfake-native's test), each picture's views combined as the service combines them, gets
the answer the service would give: its verdict (`real` -> family null) and, when not real, a
family name or `unknown`. Rows: the true family (training/families.py), then fakes of no known
family and realfake-families' unseen generators (test only, never trained on), which should
come out `unknown` or `real`, never a confident name. Reads the frozen-feature cache the shipped
recipe trained on (fills it when missing); needs ../shared/datasets; never run by tests.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from models.core.attribution import UNKNOWN, attribute
from models.core.checkpoint import load_model_dir
from models.core.dataset import Sample, list_samples
from models.core.preprocess import calibrated_probability
from models.core.verdict import label_for
from training.families import family_of
from training.feature_bank import FeatureBank, frozen_recipe, head_logits, head_outputs
from training.scale_rule import picture_rows

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DATASETS = ("realfake-dev", "realfake-train", "realfake-native", "realfake-families")
NO_FAMILY, UNSEEN = "(no known family)", "(realfake-families: unseen)"
REAL = "real (null)"


def row_name(s: Sample) -> str:
    """The true family; realfake-families' generators of a known family (LCM-SD 1.5, SDXL) count
    as that family, the others as unseen."""
    if s.source.startswith("realfake-families"):
        return family_of(s) or UNSEEN
    return family_of(s) or NO_FAMILY


def picture_answers(model, det, bank: FeatureBank, fakes: list[Sample]) -> tuple[list[str], list[str]]:
    """(row name, answer) per picture: the verdict and the family answer of its combined views
    (REAL where the verdict is real, so the family is null). Also used by bench/generalization.py."""
    feats = bank.features(fakes)
    z = np.c_[head_logits(model.head, feats), head_outputs(model.family_head, feats)]
    rows, reps = picture_rows(fakes, z, det.preprocess.native_weight)
    answers = []
    for r in rows:
        label = label_for(float(calibrated_probability(r[:1], det.temperature)[0]), det)
        family = attribute(label, r[1:], det.attribution)["family"]
        answers.append(REAL if family is None else family)
    return [row_name(s) for s in reps], answers


def print_matrix(rows: list[str], answers: list[str], families: tuple[str, ...]) -> None:
    columns = [*families, UNKNOWN, REAL]
    order = [*families, NO_FAMILY, UNSEEN]
    counts: dict[str, Counter] = defaultdict(Counter)
    for r, a in zip(rows, answers, strict=True):
        counts[r][a] += 1
    print("| true family \\ answer | " + " | ".join(columns) + " | pictures | right name | unknown |")
    print("|---" * (len(columns) + 4) + "|")
    for r in order:
        if r not in counts:
            continue
        n = sum(counts[r].values())
        right = f"{counts[r][r] / n:.2f}" if r in families else "-"
        print(f"| {r} | " + " | ".join(str(counts[r][c]) for c in columns)
              + f" | {n} | {right} | {counts[r][UNKNOWN] / n:.2f} |")
    known = [(r, a) for r, a in zip(rows, answers, strict=True) if r in families and a not in (REAL, UNKNOWN)]
    if known:
        print(f"\nnamed known-family pictures given the right family: {np.mean([r == a for r, a in known]):.3f} "
              f"({len(known)} pictures)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "models" / "default"))
    ap.add_argument("--data-root", default=str(SHARED))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    model, det = load_model_dir(args.model)
    if not det.attribution.families:
        raise SystemExit(f"{args.model} has no family head (detector.json attribution.families is empty)")
    samples = list_samples(",".join(f"{args.data_root}/{d}/manifest.csv" for d in DATASETS))
    fakes = [s for s in samples if s.split == "test" and s.label == 1]
    bank = FeatureBank.build(frozen_recipe(progress=False), fakes)
    fakes = bank.usable(fakes)
    rows, answers = picture_answers(model, det, bank, fakes)
    print(f"## Attribution on the test splits: {args.model} (version {det.version}), "
          f"unknown below {det.attribution.rule} {det.attribution.threshold:.3f}\n")
    print_matrix(rows, answers, det.attribution.families)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
