"""The frozen-backbone detector (`--head blocks`): taps, head, feature cache, balanced sampling,
calibration over sources, and the saved model serving what training validated."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from models.core.checkpoint import WEIGHTS, load_model_dir
from models.core.config import DetectorConfig
from models.core.dataset import Sample, list_samples
from models.core.network import BlockTaps, build_network
from models.core.preprocess import decode_image
from models.runtime.loader import load_detector
from tests.conftest import TINY_VIT, tiny_config, write_images
from training.augment import AugmentConfig
from training.calibrate import calibrate, weighted_threshold_at_fpr
from training.features import FeatureCache, fill, sample_key
from training.frozen import FeatureDataset, sample_weights
from training.train import train
from training.train_config import TrainConfig

TAPS = dict(TINY_VIT, depth=3)


def blocks_config(blocks=(0, 2)) -> DetectorConfig:
    return dataclasses.replace(tiny_config(), model_kwargs=dict(TAPS), head="blocks", blocks=blocks, head_dim=8)


def test_taps_read_the_cls_token_after_each_chosen_block():
    torch.manual_seed(0)
    model = build_network(blocks_config()).eval()
    vit = model.taps.vit
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        tokens = model.taps(x)
        h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        outs = []
        for block in vit.blocks:
            h = block(h)
            outs.append(h[:, 0])
        assert tokens.shape == (2, 2, TAPS["embed_dim"])
        torch.testing.assert_close(tokens, torch.stack([outs[0], outs[2]], 1))
        # Images and cached block tokens give the same logits: what training sees is what serves.
        torch.testing.assert_close(model(x), model(tokens))
    assert all(not p.requires_grad for p in model.taps.parameters())
    with pytest.raises(ValueError, match="indices in 0..2"):
        BlockTaps(vit, (0, 3))


def test_feature_cache_resumes_without_recomputing(tmp_path):
    torch.manual_seed(0)
    cfg = blocks_config()
    model = build_network(cfg)
    paths = write_images(tmp_path / "img", 6, size=(40, 36))
    (tmp_path / "img" / "broken.png").write_bytes(b"not an image")
    samples = [Sample(str(p), i % 2) for i, p in enumerate(paths)] + [Sample(str(tmp_path / "img" / "broken.png"), 0)]
    todo = [(s, v) for s in samples for v in (0, 1)]
    calls = []

    def extract(batch):
        calls.append(len(batch))
        with torch.inference_mode():
            return model.taps(torch.from_numpy(batch)).numpy()

    aug = AugmentConfig(jpeg_prob=0.5, downscale_prob=0.5, noise_prob=0.5)
    first = FeatureCache(tmp_path / "cache")
    fill(first, todo[:6], extract, cfg, aug, seed=0, progress=False)  # "interrupted" after 6 views
    again = FeatureCache(tmp_path / "cache")  # a new process reads the shards back
    assert len(again.rows) == 6
    calls.clear()
    fill(again, todo, extract, cfg, aug, seed=0, progress=False)
    assert sum(calls) == 6  # only the 6 missing readable views were computed
    assert list(again.errors) == [sample_key(samples[-1])]
    whole = FeatureCache(tmp_path / "cache2")
    fill(whole, todo, extract, cfg, aug, seed=0, progress=False)
    for key, view in whole.rows:
        np.testing.assert_array_equal(whole.get(key, view), again.get(key, view))
    # View 0 is the eval view; augmented views differ from it.
    k = sample_key(samples[0])
    assert not np.array_equal(whole.get(k, 0), whole.get(k, 1))


def test_sampling_balances_labels_and_sources():
    samples = [Sample(f"a{i}", 0, source="big") for i in range(90)] + [Sample(f"b{i}", 0, source="small") for i in range(10)]
    samples += [Sample(f"f{i}", 1, source="gen") for i in range(20)]
    w = sample_weights(samples, "source")
    y = np.array([s.label for s in samples])
    assert w[y == 0].sum() == pytest.approx(0.5) and w[y == 1].sum() == pytest.approx(0.5)
    big = sum(w[i] for i, s in enumerate(samples) if s.source == "big")
    small = sum(w[i] for i, s in enumerate(samples) if s.source == "small")
    assert big / small == pytest.approx(np.sqrt(90 / 10))  # 1/sqrt(size) per image
    assert sample_weights(samples, "none")[0] == pytest.approx(1 / len(samples))


def test_feature_dataset_replays_the_same_epoch(tmp_path):
    paths = write_images(tmp_path, 8, size=(8, 8))
    samples = [Sample(str(p), i % 2) for i, p in enumerate(paths)]
    cache = FeatureCache(tmp_path / "cache")
    for i, s in enumerate(samples):
        cache.rows.update({(sample_key(s), v): np.full((2, 4), i * 10 + v, np.float16) for v in (0, 1)})

    def epoch(n):
        ds = FeatureDataset(samples, cache, 1, sample_weights(samples, "label"), seed=3)
        return [ds[(n, i)][0].numpy().tolist() for i in range(8)]

    assert epoch(2) == epoch(2)  # a pure function of (seed, epoch, index): resume replays it
    assert epoch(2) != epoch(3)


def test_threshold_is_balanced_over_real_sources():
    # 95 easy reals from one source, 5 hard ones from another: a pooled 5% FPR would flag every
    # hard real; balanced over the two sources, at most ~5% of *each source's weight* is flagged.
    easy = np.linspace(0.0, 0.2, 95)
    hard = np.array([0.6, 0.7, 0.8, 0.9, 0.95])
    probs = np.concatenate([easy, hard])
    w = np.concatenate([np.full(95, 0.5 / 95), np.full(5, 0.5 / 5)])
    t = weighted_threshold_at_fpr(probs, w, 0.05)
    flagged_weight = w[probs >= t].sum() / w.sum()
    assert flagged_weight <= 0.05 and t > 0.9
    pooled = np.sort(probs)[::-1][5]  # an unweighted 5% FPR sits below every hard real
    assert pooled < 0.6


def test_calibrate_with_sources_fits_a_band_and_reports_fpr_per_source():
    rng = np.random.default_rng(0)
    real_a, real_b = rng.normal(-2, 1, 200), rng.normal(-1, 1, 40)
    fake = rng.normal(2, 1, 120)
    logits = np.concatenate([real_a, real_b, fake])
    labels = np.array([0] * 240 + [1] * 120)
    groups = ["a"] * 200 + ["b"] * 40 + ["gen"] * 120
    cfg = calibrate(DetectorConfig(target_fpr=0.05), logits, labels, groups)
    low, high = cfg.uncertain_band
    assert low <= cfg.threshold <= high
    per = cfg.metrics["calibration"]["val_fpr_per_real_source"]
    assert set(per) == {"a", "b"} and (per["a"]["fpr_at_threshold"] + per["b"]["fpr_at_threshold"]) / 2 <= 0.05


def _two_datasets(root):
    """Two manifests, each with train/val only (their val is held back as test)."""
    specs = []
    for d, (name, seed) in enumerate((("alpha", 1), ("beta", 2))):
        folder = root / name
        rows = []
        for label, sub in ((0, "real"), (1, "fake")):
            for i, p in enumerate(write_images(folder / sub, 24, size=(40, 40), seed=seed * 10 + label)):
                if label:  # a planted bright corner: the "generator fingerprint"
                    from PIL import Image

                    arr = np.asarray(Image.open(p)).copy()
                    arr[:8, :8] = 255
                    Image.fromarray(arr).save(p)
                rows.append([str(p.relative_to(folder)), sub, f"src{d}{label}", "g", "val" if i % 6 == 0 else "train"])
        with open(folder / "manifest.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "source", "generator", "split"])
            w.writerows(rows)
        specs.append(str(folder / "manifest.csv"))
    return ",".join(specs)


def test_two_datasets_hold_back_val_as_test_and_prefix_sources(tmp_path):
    data = _two_datasets(tmp_path)
    samples = list_samples(data)
    assert {s.source.split("/")[0] for s in samples} == {"alpha", "beta"}
    assert {s.split for s in samples} == {"train", "val", "test"}
    # every row the manifests called val is now test
    assert sum(s.split == "test" for s in samples) == 2 * 2 * 4


def test_train_blocks_head_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKELENS_CACHE", str(tmp_path / "cache"))
    data = _two_datasets(tmp_path / "data")
    cfg = TrainConfig(data=data, out=str(tmp_path / "run"), model="vit_tiny_patch16_224", model_kwargs=dict(TAPS),
                      img_size=32, head="blocks", head_dim=16, feature_views=1, balance="source", epochs=3,
                      batch_size=8, lr=3e-3, device="cpu", progress=False, save_every=None, seed=0)
    result = train(cfg)
    assert result.best_dir is not None
    model, saved = load_model_dir(result.best_dir)
    assert saved.head == "blocks" and saved.blocks == (0, 1, 2)
    assert saved.uncertain_band is not None and "val_fpr_per_real_source" in saved.metrics["calibration"]
    # The saved folder, loaded as the service would, scores val images like training's cached view 0.
    det = load_detector(result.best_dir, backend="eager", device="cpu")
    val = [s for s in list_samples(data) if s.split == "val"][:6]
    from training.features import FeatureCache, feature_cache_dir  # noqa: F401

    logits_serving = det.logits([decode_image(s.path)[0] for s in val])
    cache_dirs = list((tmp_path / "cache" / "features").iterdir())
    cache = FeatureCache(cache_dirs[0])
    with torch.inference_mode():
        cached = model(torch.from_numpy(np.stack([cache.get(sample_key(s), 0) for s in val]).astype(np.float32)))
    np.testing.assert_allclose(logits_serving, cached.reshape(-1).numpy(), atol=0.05)
    # resume after the run finished is a no-op that keeps the result
    again = train(dataclasses.replace(cfg, resume=True))
    assert again.steps == result.steps
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["head"] == "blocks"
    assert (result.best_dir / WEIGHTS).is_file()


def test_content_balance_evens_the_labels_inside_every_content_cluster():
    from training.frozen import ONE_LABEL_MASS, balance_within_clusters, content_clusters

    rng = np.random.default_rng(0)
    # two kinds of content: "portraits" (mostly fake) and "streets" (mostly real), as in the shared data
    centres = rng.normal(size=(2, 16)) * 5
    kind = np.r_[np.zeros(60, int), np.ones(60, int)]
    tokens = centres[kind] + rng.normal(size=(120, 16))
    y = np.r_[np.ones(50), np.zeros(10), np.zeros(50), np.ones(10)].astype(int)
    clusters = content_clusters(tokens, k=2, seed=0)
    assert len(set(clusters[kind == 0].tolist())) == 1 and clusters[0] != clusters[-1]  # the two kinds found
    w = balance_within_clusters(np.full(120, 1 / 120), y, clusters)
    assert w.sum() == pytest.approx(1.0) and w[y == 1].sum() == pytest.approx(0.5)
    for c in set(clusters.tolist()):
        m = clusters == c
        real, fake = w[m & (y == 0)].sum(), w[m & (y == 1)].sum()
        assert max(real, fake) / min(real, fake) < 1 + ONE_LABEL_MASS * 5  # near even; before: 5 to 1
    # deterministic: a rebuild or a resume draws the same clusters
    np.testing.assert_array_equal(clusters, content_clusters(tokens, k=2, seed=0))
