"""A trained frozen-head detector on the held-back pictures, per source and per view.

    python -m bench.views_report RUN_OR_MODEL_DIR [--twins TWINS/manifest.csv]

For the shared datasets' test splits and for realfake-families (test only: unseen generators and
camera photos), each picture is scored three ways from the feature cache: its resized file alone,
its native crop alone, and both combined by the model's own rule (what the service computes for an
upload that yields both views). Rates are at the model's threshold: TPR for fake sources, FPR for
real ones. Needs ../shared/datasets and the feature cache of bench/generalization.py.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from models.core.checkpoint import load_model_dir
from models.core.metrics import ece, roc_auc
from models.core.preprocess import calibrated_probability
from training.feature_bank import FeatureBank, frozen_recipe, head_logits
from training.scale_rule import combine

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def per_picture(samples, logits) -> dict:
    """(picture, label) -> {"source", "label", "resized": [...], "native": [...]}"""
    out: dict = defaultdict(lambda: {"resized": [], "native": []})
    for s, z in zip(samples, logits, strict=True):
        row = out[(s.picture or s.path, s.label)]
        row["label"] = s.label
        if s.view != "native" or "source" not in row:  # a picture is named by its whole (resized) file
            row["source"] = s.source
        row["native" if s.view == "native" else "resized"].append(float(z))
    return out


def report(title: str, pictures: dict, det) -> None:
    w, t, thr = det.preprocess.native_weight, det.temperature, det.threshold
    views = {"resized": lambda r: np.mean(r["resized"]) if r["resized"] else None,
             "native": lambda r: np.mean(r["native"]) if r["native"] else None,
             "multi-view": lambda r: combine(r["resized"], r["native"], w)}
    print(f"\n### {title} (native weight {w:g}, threshold {thr:.3f})\n")
    print("| source | kind | pictures | " + " | ".join(f"{v} rate" for v in views) + " |")
    print("|---|---|---|---|---|---|")
    by_source = defaultdict(list)
    for r in pictures.values():
        by_source[(r["source"], r["label"])].append(r)
    for (source, label), rows in sorted(by_source.items(), key=lambda x: (x[0][1], x[0][0])):
        cells = []
        for fn in views.values():
            z = [fn(r) for r in rows if fn(r) is not None]
            cells.append("-" if not z else f"{np.mean(calibrated_probability(np.array(z), t) >= thr):.3f} ({len(z)})")
        print(f"| {source} | {'fake: TPR' if label else 'real: FPR'} | {len(rows)} | " + " | ".join(cells) + " |")
    for name, fn in views.items():
        rows = [r for r in pictures.values() if fn(r) is not None]
        y = np.array([r["label"] for r in rows])
        if len(set(y.tolist())) == 2:
            p = calibrated_probability(np.array([fn(r) for r in rows]), t)
            print(f"\n{name}: AUC {roc_auc(y, p):.4f}, ECE {ece(y, p):.4f}, pictures {len(rows)}", end="")
    print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a trained frozen-head run or model folder")
    ap.add_argument("--data-root", default=str(SHARED))
    args = ap.parse_args(argv)
    from models.core.dataset import list_samples

    model, det = load_model_dir(args.model)
    head = model.head
    test = list_samples(",".join(f"{args.data_root}/{d}/manifest.csv"
                                 for d in ("realfake-dev", "realfake-train", "realfake-native")), split="test")
    families = list_samples(f"{args.data_root}/realfake-families/manifest.csv")
    bank = FeatureBank.build(frozen_recipe(progress=False), test + families)
    for title, samples in (("held-back test splits", test), ("realfake-families (unseen generators)", families)):
        samples = bank.usable(samples)
        report(title, per_picture(samples, head_logits(head, bank.features(samples))), det)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
