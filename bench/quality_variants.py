"""Compare detector recipes on the shared datasets' held-back splits (docs/quality.md).

    python -m bench.quality_variants --out /tmp/variants

Every variant trains through `fakelens train`'s own loop on the same feature cache (CLIP ViT-B/16,
every block's CLS token, view 0 = eval view, view 1 = augmented), is calibrated on the pooled val
split of both datasets, and is scored on both test splits (realfake-dev test, realfake-train's own
val, which fakelens holds back as test). The final-embedding probe (UnivFD-style) is a logistic
regression on the 512-d CLIP embedding of view 0. Needs ../shared/datasets (never used by tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from models.core.dataset import list_samples
from models.core.metrics import binary_report
from models.core.preprocess import calibrated_probability
from training.calibrate import calibrate
from training.features import FeatureCache, cache_key, feature_cache_dir, sample_key
from training.frozen import augment_config, cached_logits, detector_config, with_all_blocks
from training.train import train
from training.train_config import TrainConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
DATA = f"{SHARED}/realfake-dev/manifest.csv,{SHARED}/realfake-train/manifest.csv"
# The shipped recipe (docs/quality.md); variants change one thing at a time.
RECIPE = dict(model="clip-vit-b16", pretrained=True, head="blocks", feature_views=1, balance="source",
              jpeg_prob=0.5, blur_prob=0.3, downscale_prob=0.5, noise_prob=0.3, epochs=10, batch_size=64,
              lr=1e-3, weight_decay=0.05, warmup_epochs=0.5, device="cpu", progress=False, save_every=None)
VARIANTS = {
    "blocks (shipped)": {},
    "blocks, no balance": dict(balance="none"),
    "blocks, label balance only": dict(balance="label"),
    "blocks, no augmented view": dict(feature_views=0),
}
MIN_GROUP = 30


def group_table(samples, labels, probs, threshold) -> dict:
    rows = {}
    for src in sorted({s.source for s in samples}):
        m = np.array([s.source == src for s in samples])
        y, p = labels[m], probs[m]
        kind = "real" if (y == 0).all() else "fake" if (y == 1).all() else "mixed"
        rate = float(np.mean(p >= threshold))
        rows[src] = {"n": int(m.sum()), "kind": kind, ("fpr" if kind == "real" else "tpr"): rate}
    return rows


def score(name, cfg, logits_by_split, samples_by_split) -> dict:
    val_logits, val_labels = logits_by_split["val"]
    groups = [s.source for s in samples_by_split["val"]]
    cal = calibrate(cfg, val_logits, val_labels, groups)
    out = {"threshold": cal.threshold, "temperature": cal.temperature, "band": cal.uncertain_band}
    for split in ("val", "test"):
        z, y = logits_by_split[split]
        p = calibrated_probability(z, cal.temperature)
        rep = binary_report(y, p, cal.threshold)
        out[split] = {k: rep[k] for k in ("n", "auc", "ap", "accuracy", "eer", "ece", "tpr", "fpr", "tpr_at_fpr")}
        out[split]["groups"] = group_table(samples_by_split[split], y, p, cal.threshold)
        big = {k: v for k, v in out[split]["groups"].items() if v["n"] >= MIN_GROUP}
        out[split]["worst_real_fpr"] = max((v["fpr"] for v in big.values() if v["kind"] == "real"), default=None)
        out[split]["worst_fake_tpr"] = min((v["tpr"] for v in big.values() if v["kind"] == "fake"), default=None)
    logging.info("%s: test AUC %.4f ECE %.3f worst real FPR %.3f worst fake TPR %.3f", name, out["test"]["auc"],
                 out["test"]["ece"], out["test"]["worst_real_fpr"], out["test"]["worst_fake_tpr"])
    return out


def final_embedding_probe(cache: FeatureCache, det, samples_by_split) -> dict:
    """UnivFD-style: logistic regression on CLIP's final 512-d embedding (norm + projection of the
    last block's CLS token, exactly the model's image embedding)."""
    from sklearn.linear_model import LogisticRegression

    from models.core.network import build_network

    vit = build_network(det).taps.vit
    last = det.blocks.index(len(vit.blocks) - 1)

    def embed(samples):
        x = torch.from_numpy(np.stack([cache.get(sample_key(s), 0)[last] for s in samples]).astype(np.float32))
        with torch.inference_mode():
            e = vit.head(vit.norm(x)).numpy()
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    train_s = samples_by_split["train"]
    xs = {k: embed(v) for k, v in samples_by_split.items()}
    ys = {k: np.array([s.label for s in v]) for k, v in samples_by_split.items()}
    best = None
    for c in (0.1, 1.0, 10.0):  # chosen on val AUC, never on test
        clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit(xs["train"], ys["train"])
        from models.core.metrics import roc_auc

        auc = roc_auc(ys["val"], clf.decision_function(xs["val"]))
        if best is None or auc > best[0]:
            best = (auc, clf)
    clf = best[1]
    del train_s
    return {k: (clf.decision_function(xs[k]), ys[k]) for k in ("val", "test")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = list_samples(DATA)
    base = TrainConfig(data=DATA, out="", **RECIPE)
    det = with_all_blocks(detector_config(base))
    cache = FeatureCache(feature_cache_dir(cache_key(det, augment_config(base), base.seed)))
    by_split = {k: [s for s in samples if s.split == k and sample_key(s) not in cache.errors]
                for k in ("train", "val", "test")}
    results = {}
    start = time.perf_counter()
    results["CLIP final-embedding probe"] = score("probe", det, final_embedding_probe(cache, det, by_split), by_split)
    results["CLIP final-embedding probe"]["seconds"] = time.perf_counter() - start
    for name, change in VARIANTS.items():
        if args.only and name not in args.only.split(","):
            continue
        cfg = dataclasses.replace(base, out=str(out / name.replace(" ", "_").replace(",", "")), **change)
        start = time.perf_counter()
        result = train(cfg)
        from models.core.checkpoint import load_model_dir

        model, saved = load_model_dir(result.best_dir)
        logits = {k: cached_logits(model, cache, by_split[k], "cpu")[:2] for k in ("val", "test")}
        results[name] = score(name, saved, logits, by_split)
        results[name]["seconds"] = time.perf_counter() - start
        results[name]["run"] = str(result.best_dir)
    (out / "variants.json").write_text(json.dumps(results, indent=1, default=float))
    print(json.dumps({k: {"test_auc": v["test"]["auc"], "test_ece": v["test"]["ece"],
                          "worst_real_fpr": v["test"]["worst_real_fpr"], "worst_fake_tpr": v["test"]["worst_fake_tpr"]}
                      for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
