"""Leave one out: how a recipe does on generator families and real-photo groups it never saw.

    python -m bench.generalization [--twins TWINS/manifest.csv] [--recipe frozen|lora] [--out DIR]

The decision metric for every recipe choice (issue 17), because the shared datasets' own test
splits share sources, content and processing with their train splits and flatter every recipe.
Each fold leaves out one generator family (its fakes) or one real group (its reals, and the
synthetic twins made from them), trains on the train split of the rest through `fakelens train`'s
own loop, calibrates on the rest's val split (scale rule, temperature, 5% source-balanced FPR
threshold), and tests on the left-out pictures of the train and val splits (never a test split):
- a family fold: left-out fakes against the rest's val reals: AUC, and TPR at the fold's threshold;
- a real-group fold: left-out reals against the rest's val fakes: AUC, and FPR at the threshold
  (the outside failure in miniature: a kind of real photo the detector never saw).
AUC is given for the resized view (the shrunk files), the native view (realfake-native's crops)
and multi-view (both, combined by the fold's rule, as the service scores a picture).
A family fold also reports what the fold's family head (trained without the left-out family) answers
for its pictures: judged real (family null), `unknown`, or a (necessarily wrong) family name.

Frozen-backbone folds read the shared feature cache (one extraction for all folds: 42 min
on 2 busy cores from empty, plus the twins; a fold then takes 15-90 s). Needs ../shared/datasets;
never run by tests.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.attribution import REAL, picture_answers
from models.core.attribution import UNKNOWN
from models.core.checkpoint import load_model_dir
from models.core.dataset import Sample, list_samples
from models.core.metrics import ece, roc_auc
from models.core.preprocess import calibrated_probability, decode_image, file_view
from training.feature_bank import FeatureBank, frozen_recipe, head_logits
from training.scale_rule import picture_logits
from training.train import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DATASETS = ("realfake-dev", "realfake-train", "realfake-native")

FAMILIES = {  # fake sources (or generators) per generator family
    "sd15": lambda s: s.generator.startswith("sd15"),
    "mj-dalle2-2022": lambda s: src(s) in ("dcsan-imagen", "dalle2-preview"),
    "commercial-2025": lambda s: src(s) in ("awesome-gpt4o", "opennana", "nano-banana-images", "necenzurat"),
    "kolors-sdxl": lambda s: src(s) == "kolors",
    "gan": lambda s: src(s) == "gan-detector" or s.generator == "unknown-gan",
}
REAL_GROUPS = {  # real sources per group
    "people-crowds": ("shanghaitech", "widerface", "coco128"),
    "portraits": ("deepface", "celeba-hq", "necenzurat"),
    "professional": ("dpst", "dreambooth", "coworking", "kodak24", "afhq"),
    "nature-objects": ("imagenet-sample", "bsds500", "urban100", "sun-hays80", "ml72-playground"),
}


def src(s: Sample) -> str:
    """The source without its dataset prefix; a twin's is that of the real it was made from, read
    from its picture (`<dataset>/images/<source>/<name>`)."""
    if is_twin(s):
        return Path(s.picture).parent.name
    return s.source.rsplit("/", 1)[-1]


def is_twin(s: Sample) -> bool:
    return s.generator == "taef2"


@dataclass(frozen=True)
class Fold:
    name: str
    kind: str  # "family" | "real"

    def holds(self, s: Sample) -> bool:
        """Whether the fold leaves this sample out of training (twins of left-out reals included)."""
        if self.kind == "family":
            return s.label == 1 and not is_twin(s) and FAMILIES[self.name](s)
        return src(s) in REAL_GROUPS[self.name] and (s.label == 0 or is_twin(s))

    def tested(self, s: Sample) -> bool:
        return self.holds(s) and not is_twin(s) and s.split in ("train", "val")


FOLDS = [Fold(n, "family") for n in FAMILIES] + [Fold(n, "real") for n in REAL_GROUPS]


def write_manifest(path: Path, parts: dict[str, list[Sample]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "source", "generator", "split", "parent", "view"])
        w.writeheader()
        for split, samples in parts.items():
            for s in samples:
                w.writerow({"path": str(Path(s.path).resolve()), "label": "fake" if s.label else "real",
                            "source": s.source, "generator": s.generator, "split": split,
                            "parent": s.picture or s.path, "view": s.view or "resized"})
    return path


def view_auc(pos: list[Sample], zpos: np.ndarray, neg: list[Sample], zneg: np.ndarray, view: str) -> float | None:
    """AUC of the files of one view kind only (None where a side has none)."""
    keep_p = [i for i, s in enumerate(pos) if (s.view == "native") == (view == "native")]
    keep_n = [i for i, s in enumerate(neg) if (s.view == "native") == (view == "native")]
    if not keep_p or not keep_n:
        return None
    y = np.r_[np.ones(len(keep_p)), np.zeros(len(keep_n))]
    return float(roc_auc(y, np.r_[zpos[keep_p], zneg[keep_n]]))


def file_logits(model, det, bank: FeatureBank, samples: list[Sample], batch: int = 32) -> np.ndarray:
    """Each file's logit on its own view: from the feature cache when the backbone stayed frozen,
    else (LoRA, tuned blocks) through the adapted backbone."""
    if not det.tunes_backbone:
        return head_logits(model.head, bank.features(samples))
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(samples), batch):
            x = np.stack([file_view(decode_image(s.path)[0], det.preprocess) for s in samples[i : i + batch]])
            out.append(model(torch.from_numpy(x)).float().reshape(len(x), -1)[:, 0].numpy())  # the verdict logit
    return np.concatenate(out)


def run_fold(fold: Fold, samples: list[Sample], bank: FeatureBank, recipe, work: Path,
             trains_on=lambda s: True) -> dict:
    train_part = [s for s in samples if s.split == "train" and not fold.holds(s) and trains_on(s)]
    val_part = [s for s in samples if s.split == "val" and not fold.holds(s) and trains_on(s)]
    held = [s for s in samples if fold.tested(s)]
    manifest = write_manifest(work / fold.name / "manifest.csv", {"train": train_part, "val": val_part, "test": held})
    start = time.perf_counter()
    result = train(dataclasses.replace(recipe, data=str(manifest), out=str(work / fold.name / "run")))
    seconds = time.perf_counter() - start
    model, det = load_model_dir(result.best_dir)
    # the positives are always the fakes: left-out fakes vs val reals, or val fakes vs left-out reals
    # the same counterpart pictures whatever the recipe trains on, so recipes compare on one test set
    other = [s for s in samples if s.split == "val" and not fold.holds(s) and s.label != held[0].label
             and not is_twin(s)]
    z_held, z_other = file_logits(model, det, bank, held), file_logits(model, det, bank, other)
    fakes, z_f, reals, z_r = (held, z_held, other, z_other) if held[0].label == 1 else (other, z_other, held, z_held)
    w = det.preprocess.native_weight
    pf, _, _ = picture_logits(fakes, z_f, w)
    pr, _, _ = picture_logits(reals, z_r, w)
    y = np.r_[np.ones(len(pf)), np.zeros(len(pr))]
    probs = calibrated_probability(np.r_[pf, pr], det.temperature)
    flagged = probs >= det.threshold
    held_flagged = flagged[: len(pf)] if fold.kind == "family" else flagged[len(pf):]
    attribution = held_attribution(model, det, bank, held) if fold.kind == "family" else None
    return {
        "attribution": attribution,
        "fold": fold.name, "kind": fold.kind, "n_held_pictures": int(len(pf) if fold.kind == "family" else len(pr)),
        "auc_resized": view_auc(fakes, z_f, reals, z_r, "resized"),
        "auc_native": view_auc(fakes, z_f, reals, z_r, "native"),
        "auc_multi": float(roc_auc(y, np.r_[pf, pr])),
        "rate": float(np.mean(held_flagged)), "rate_name": "TPR" if fold.kind == "family" else "FPR",
        "ece": float(ece(y, probs)), "native_weight": w, "threshold": det.threshold, "train_seconds": seconds,
    }


def held_attribution(model, det, bank: FeatureBank, held: list[Sample]) -> dict | None:
    """What the fold's family head (trained without the left-out family) answers for its pictures:
    a held-out family should mostly come out `unknown` (or real), not as a confident wrong name."""
    if not det.attribution.families or det.tunes_backbone:
        return None
    _, answers = picture_answers(model, det, bank, held)
    counts = Counter(answers)
    n, real, unknown = len(answers), counts.pop(REAL, 0), counts.pop(UNKNOWN, 0)
    return {"pictures": n, "real": real / n, "unknown": unknown / n, "named": sum(counts.values()) / n,
            "unknown_of_attributed": unknown / max(n - real, 1), "names": dict(counts.most_common(3)),
            "families": list(det.attribution.families)}


def print_attribution(rows: list[dict]) -> None:
    rows = [r for r in rows if r.get("attribution")]
    if not rows:
        return
    print("\n#### The left-out family's attribution (the fold's family head never saw it)\n")
    print("| left out | pictures | judged real (family null) | unknown | a wrong name | unknown of those not real "
          "| wrong names given |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        a = r["attribution"]
        names = ", ".join(f"{k} {v}" for k, v in a["names"].items()) or "-"
        print(f"| {r['fold']} | {a['pictures']} | {a['real']:.2f} | {a['unknown']:.2f} | {a['named']:.2f} "
              f"| {a['unknown_of_attributed']:.2f} | {names} |")


def slug(name: str) -> str:
    """A folder name without commas (a comma separates datasets in `--data`)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n### {title}\n")
    print("| left out | kind | pictures | AUC resized | AUC native | AUC multi-view | at the fold's threshold | ECE | native weight |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fold']} | {r['kind']} | {r['n_held_pictures']} | {fmt(r['auc_resized'])} | {fmt(r['auc_native'])} | "
              f"{fmt(r['auc_multi'])} | {r['rate_name']} {r['rate']:.3f} | {r['ece']:.3f} | {r['native_weight']:g} |")
    print(f"\nworst-fold AUC: {min(r['auc_multi'] for r in rows):.2f}")
    real = [r["rate"] for r in rows if r["kind"] == "real"]
    if real:
        print(f"worst left-out real group FPR: {max(real):.2f}")
    print(f"mean fold training time: {statistics.mean(r['train_seconds'] for r in rows):.1f} s")
    print_attribution(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=str(SHARED))
    ap.add_argument("--twins", help="a twins manifest (fakelens twins) added to every fold's training data")
    ap.add_argument("--folds", default="all", help="comma-separated fold names (default: all)")
    ap.add_argument("--train-datasets", default=",".join(DATASETS),
                    help="datasets the recipe trains and calibrates on (the others are only tested)")
    ap.add_argument("--out", default="/tmp/fakelens-generalization")
    ap.add_argument("--name", default="frozen head", help="the recipe's name in the table")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a TrainConfig field of the frozen recipe, e.g. --set epochs=5")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    specs = [f"{args.data_root}/{d}/manifest.csv" for d in DATASETS] + ([args.twins] if args.twins else [])
    samples = [s for s in list_samples(",".join(specs)) if s.split in ("train", "val")]
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    recipe = frozen_recipe(progress=False, save_every=None, **overrides)
    bank = FeatureBank.build(recipe, samples)
    samples = bank.usable(samples)
    folds = FOLDS if args.folds == "all" else [f for f in FOLDS if f.name in args.folds.split(",")]
    chosen = set(args.train_datasets.split(","))

    def trains_on(s: Sample) -> bool:
        return s.source.split("/")[0] in chosen or is_twin(s)

    title = f"{args.name}{' + twins' if args.twins else ''}"
    work = Path(args.out) / slug(title)
    rows = []
    for fold in folds:
        rows.append(run_fold(fold, samples, bank, recipe, work, trains_on))
        logging.warning("fold %s: %s", fold.name, json.dumps(rows[-1]))
    print_table(rows, title)
    work.mkdir(parents=True, exist_ok=True)
    (work / "folds.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
