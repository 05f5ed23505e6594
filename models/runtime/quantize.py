"""Static int8 for an export folder, calibrated on real images and kept only if verdicts hold.

    fakelens export RUN --out EXP --data DATA --int8-static      # export, then this step
    fakelens quantize EXP|default --data DATA [--calib 256]      # on an existing export

Writes two int8 copies of `model.onnx`, both with activation ranges calibrated on images
of DATA's train split cut by the detector's own `eval_views`:
- `model.int8-static.xml` (+ `.bin`), backend `openvino-int8`: NNCF post-training
  quantisation of the OpenVINO model (preset MIXED), with SmoothQuant for transformers
  (any graph with a Softmax). CLIP ViTs carry a few activation channels hundreds of times
  larger than the rest; SmoothQuant moves that range into the preceding weights per
  channel, where plain MinMax ranges left ordinary channels a handful of levels (27% of
  real photographs flagged on the default detector: docs/performance.md). Needs `nncf`
  (`pip install fakelens[int8]`); without it only the ONNX Runtime file is made.
- `model.int8-static.onnx`, backend `onnx-int8-static`: ONNX Runtime static QDQ
  (per-channel int8 weights, uint8 activations, MinMax) of the compute ops only
  (Conv/MatMul/Gemm: softmax, layer norm and the head stay float).

It then gates each on DATA's val split, fp32 (`model.onnx`) against the int8 runtime,
through the same `Detector` path the service uses:

- validation AUC may drop by at most MAX_AUC_DROP (0.005), and
- the false-positive rate at the shipped threshold (`models.core.verdict.is_flagged` on the
  real images) may move by at most MAX_FPR_MOVE_POINTS (1 percentage point).

Every candidate's figures, and the img/s of each int8 runtime and of the float default
timed on the same validation views, go into metadata.json under "int8_static"; its
`backend` is the fastest candidate that passed and beats the float default (else the
fastest candidate, for the record). `load_detector(..., backend="auto")` offers int8 only
when the record says passed and faster; otherwise the export's usual default (OpenVINO bf16
on CPU) stays. The runtime reads that record (`models.runtime.metadata.offered_int8_backend`)
and loads the int8 files through their rows in `models.runtime.backends.SPECS`, so it never
imports this module; this module uses the runtime's `Detector` to gate, one way only.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.core.checkpoint import CONFIG
from models.core.config import DetectorConfig
from models.core.dataset import list_samples, val_samples
from models.core.metrics import roc_auc
from models.core.preprocess import ImageError, decode_image, eval_views
from models.core.verdict import is_flagged
from models.runtime.backends import openvino_core
from models.runtime.detector import BACKENDS, Detector, default_backend
from models.runtime.metadata import (
    INPUT_NAME,
    INT8_BACKENDS,
    INT8_FILES,
    INT8_META_KEY,
    ONNX_FILE,
    read_metadata,
    write_metadata,
)

MAX_AUC_DROP = 0.005
MAX_FPR_MOVE_POINTS = 1.0
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]
CALIB_BATCH = 8
SPEED_IMAGES = 96  # validation views timed per backend to decide whether int8 is worth offering
METHODS = {
    "openvino-int8": "NNCF post-training quantisation of the OpenVINO model, preset MIXED, SmoothQuant for "
                     "transformers, fast bias correction",
    "onnx-int8-static": "onnxruntime quantize_static QDQ, per-channel s8 weights, u8 activations, MinMax, "
                        + "/".join(QUANTIZED_OPS),
}


def _views(paths: Sequence[str], cfg: DetectorConfig) -> list[np.ndarray]:
    out = []
    for path in paths:
        try:
            out.append(eval_views(decode_image(path)[0], cfg.preprocess))
        except (ImageError, OSError):  # an unreadable file is skipped, as training does
            continue
    return out


def quantize_static(src: Path, dst: Path, calibration: list[np.ndarray]) -> None:
    """QDQ int8 copy of `src` at `dst` with activation ranges from `calibration` (normalised views)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    if not calibration:
        raise ValueError("no decodable calibration images: give a dataset with a train split of real images")

    class Reader(CalibrationDataReader):
        def __init__(self, views: np.ndarray):
            self.batches = iter([{INPUT_NAME: views[i : i + CALIB_BATCH]} for i in range(0, len(views), CALIB_BATCH)])

        def get_next(self):
            return next(self.batches, None)

    reader = Reader(np.concatenate(calibration))
    # The quantizer logs a root-level hint to run quant_pre_process; the gate is our check.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        tmp = dst.with_name(f".tmp-{dst.name}")  # renamed into place only once whole
        ort_quantize_static(
            str(src), str(tmp), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )
        tmp.replace(dst)
    finally:
        root.setLevel(level)


def is_transformer(model) -> bool:
    """Attention in the graph: the outlier channels SmoothQuant is for (ViTs, not CNNs)."""
    return any(op.get_type_name() == "Softmax" for op in model.get_ops())


def quantize_openvino(src: Path, dst: Path, calibration: list[np.ndarray]) -> None:
    """NNCF int8 OpenVINO IR of `src` (ONNX) at `dst` (.xml, .bin beside), calibrated on `calibration`."""
    import nncf
    import openvino as ov

    if not calibration:
        raise ValueError("no decodable calibration images: give a dataset with a train split of real images")
    model = openvino_core().read_model(str(src))
    views = np.concatenate(calibration)
    batches = [views[i : i + CALIB_BATCH] for i in range(0, len(views), CALIB_BATCH)]
    quantized = nncf.quantize(
        model, nncf.Dataset(batches), subset_size=len(batches), preset=nncf.QuantizationPreset.MIXED,
        model_type=nncf.ModelType.TRANSFORMER if is_transformer(model) else None,
    )
    # Written under temporary names, .bin first: an .xml in place means the pair is whole.
    tmp = dst.with_name(f".tmp-{dst.name}")
    ov.save_model(quantized, str(tmp), compress_to_fp16=False)
    tmp.with_suffix(".bin").replace(dst.with_suffix(".bin"))
    tmp.replace(dst)


def fpr_at_threshold(labels: np.ndarray, probs: np.ndarray, cfg: DetectorConfig) -> float:
    reals = labels == 0
    return float(np.mean(is_flagged(probs[reals], cfg))) if reals.any() else float("nan")


def gate(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray, cfg: DetectorConfig) -> dict[str, Any]:
    """The verdict-keeping check on one set of validation probabilities, both ways."""
    auc_fp32, auc_int8 = roc_auc(labels, fp32), roc_auc(labels, int8)
    fpr_fp32, fpr_int8 = fpr_at_threshold(labels, fp32, cfg), fpr_at_threshold(labels, int8, cfg)
    auc_drop = auc_fp32 - auc_int8
    fpr_move = 100 * abs(fpr_int8 - fpr_fp32)
    return {
        "val_images": int(len(labels)), "threshold": float(cfg.threshold),
        "auc_fp32": auc_fp32, "auc_int8": auc_int8, "auc_drop": auc_drop,
        "fpr_fp32": fpr_fp32, "fpr_int8": fpr_int8, "fpr_move_points": fpr_move,
        "max_abs_prob_diff": float(np.max(np.abs(int8 - fp32))) if len(labels) else 0.0,
        "bounds": {"max_auc_drop": MAX_AUC_DROP, "max_fpr_move_points": MAX_FPR_MOVE_POINTS},
        "passed": bool(np.isfinite(auc_drop) and np.isfinite(fpr_move)
                       and auc_drop <= MAX_AUC_DROP and fpr_move <= MAX_FPR_MOVE_POINTS),
    }


def _probabilities(folder: Path, cfg: DetectorConfig, backend: str, views: list[np.ndarray]) -> np.ndarray:
    det = Detector(cfg, BACKENDS[backend](folder, cfg, "cpu"), str(folder))
    return np.concatenate([det.probabilities_from_views(views[i : i + 32]) for i in range(0, len(views), 32)])


def speeds(folder: Path, cfg: DetectorConfig, names: Sequence[str], views: list[np.ndarray],
           rounds: int = 2) -> dict[str, float]:
    """img/s of each backend on the same views (batch 32), interleaved so load hits all alike."""
    dets = {n: Detector(cfg, BACKENDS[n](folder, cfg, "cpu"), str(folder)) for n in names}
    sample = views[:SPEED_IMAGES]
    rates: dict[str, list[float]] = {n: [] for n in names}
    for det in dets.values():
        det.logits_from_views(sample[:2])  # first-call setup outside the timing
    for _ in range(rounds):
        for name, det in dets.items():
            start = time.perf_counter()
            for i in range(0, len(sample), 32):
                det.logits_from_views(sample[i : i + 32])
            rates[name].append(len(sample) / (time.perf_counter() - start))
    return {n: float(np.median(r)) for n, r in rates.items()}


def float_default(folder: Path) -> str:
    """What `auto` runs on CPU without int8 (the runtime int8 has to beat)."""
    return default_backend(folder, "cpu", int8=False)


def int8_candidates() -> list[str]:
    """The int8 runtimes this installation can make: NNCF's only where nncf is installed."""
    try:
        import nncf  # noqa: F401
    except ImportError:
        return ["onnx-int8-static"]
    return list(INT8_BACKENDS)


QUANTIZERS: dict[str, Callable[[Path, Path, list[np.ndarray]], None]] = {
    "openvino-int8": quantize_openvino, "onnx-int8-static": quantize_static,
}


def _labelled_views(val: Sequence[tuple[str, int]], cfg: DetectorConfig) -> tuple[list[np.ndarray], np.ndarray]:
    labels, views = [], []
    for path, label in val:
        v = _views([path], cfg)
        if v:
            views.append(v[0])
            labels.append(label)
    return views, np.asarray(labels)


def choose(candidates: dict[str, dict[str, Any]]) -> str:
    """The fastest candidate that keeps the verdicts and beats the float default; else the fastest."""
    offered = [n for n, c in candidates.items() if c["passed"] and c["faster"]]
    return max(offered or candidates, key=lambda n: candidates[n]["img_s"])


def add_int8_static(folder: str | Path, calib: Sequence[str], val: Sequence[tuple[str, int]],
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Quantise EXP's model.onnx with each int8 method, gate each on `val`, record it in metadata.json."""
    folder = Path(folder)
    if not (folder / ONNX_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {ONNX_FILE}; run `fakelens export` first")
    if not val:
        raise ValueError("the gate needs labelled validation images (DATA's val split is empty)")
    cfg = DetectorConfig.load(folder / CONFIG)
    meta = read_metadata(folder)
    calibration = _views(calib, cfg)
    names = int8_candidates()
    for name in names:
        QUANTIZERS[name](folder / ONNX_FILE, folder / INT8_FILES[name], calibration)
    views, labels = _labelled_views(val, cfg)
    default = float_default(folder)
    rates = speeds(folder, cfg, [default, *names], views)
    fp32 = _probabilities(folder, cfg, "onnx", views)
    candidates = {}
    for name in names:
        candidates[name] = gate(fp32, _probabilities(folder, cfg, name, views), labels, cfg)
        # int8 that keeps the verdicts but runs slower than the float default is not worth
        # offering (OpenVINO bf16 on AMX often is: docs/performance.md)
        candidates[name].update(img_s=rates[name], faster=bool(rates[name] > rates[default]),
                                file=INT8_FILES[name], method=METHODS[name])
    backend = choose(candidates)
    result = {**candidates[backend], "img_s": {**rates}, "float_default": default, "backend": backend,
              "calibration_images": len(calib), "candidates": candidates}
    meta[INT8_META_KEY] = result
    write_metadata(folder, meta)
    for name, c in candidates.items():
        log(f"int8 static {name} ({c['img_s']:.1f} img/s vs {default} {rates[default]:.1f}): val AUC "
            f"{c['auc_int8']:.4f} vs fp32 {c['auc_fp32']:.4f} (drop {c['auc_drop']:+.4f}, bound {MAX_AUC_DROP}); "
            f"FPR at threshold {c['fpr_int8']:.2%} vs {c['fpr_fp32']:.2%} ({c['fpr_move_points']:.2f} points, "
            f"bound {MAX_FPR_MOVE_POINTS}): {'keeps' if c['passed'] else 'changes'} the verdicts, "
            f"{'faster' if c['faster'] else 'not faster'}")
    if result["passed"] and result["faster"]:
        log(f"int8: {backend} offered by auto")
    else:
        log(f"int8: none offered ({default} stays the default)")
    return result


def calibration_paths(data: str, limit: int) -> list[str]:
    """Up to `limit` train-split images, evenly spaced so every source/generator is represented."""
    paths = [s.path for s in list_samples(data, split="train")]
    if not paths:
        raise ValueError(f"dataset {data} has no train split images to calibrate on")
    if len(paths) > limit:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).astype(int)]
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", help="export folder (with model.onnx)")
    ap.add_argument("--data", required=True, help="dataset folder/manifest: train split calibrates, val gates")
    ap.add_argument("--calib", type=int, default=256, help="calibration images (default 256)")
    args = ap.parse_args(argv)
    add_int8_static(args.export, calibration_paths(args.data, args.calib), val_samples(args.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
