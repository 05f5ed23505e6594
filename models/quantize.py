"""Static int8 for an export folder, calibrated on real images and kept only if verdicts hold.

    fakelens export RUN --out EXP --data DATA --int8-static      # export, then this step
    python -m models.quantize EXP --data DATA [--calib 256]     # on an existing export

Writes `model.int8-static.onnx` beside `model.onnx`: ONNX Runtime static QDQ quantisation
(per-channel int8 weights, uint8 activations whose ranges are calibrated on images of
DATA's train split cut by the detector's own `eval_views`), of the compute ops only
(Conv/MatMul/Gemm: softmax, layer norm and the head stay float, where int8 hurts most).
It then runs the gate on DATA's val split, fp32 (`model.onnx`) against the int8 runtime
that `auto` would use, through the same `Detector` path the service uses:

- validation AUC may drop by at most MAX_AUC_DROP (0.005), and
- the false-positive rate at the shipped threshold (`models.verdict.is_flagged` on the
  real images) may move by at most MAX_FPR_MOVE_POINTS (1 percentage point).

Both figures and the verdict go into metadata.json under "int8_static", with the img/s of
each int8 runtime and of the float default timed on the same validation views (the faster
int8 runtime is the one gated). `load_detector(..., backend="auto")` offers int8 only when
the record says passed and faster (`offered_backend`); otherwise the export's usual
default (OpenVINO bf16 on CPU) stays.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.config import DetectorConfig

INT8_STATIC_FILE = "model.int8-static.onnx"
MAX_AUC_DROP = 0.005
MAX_FPR_MOVE_POINTS = 1.0
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]
CALIB_BATCH = 8
SPEED_IMAGES = 96  # validation views timed per backend to decide whether int8 is worth offering
META_KEY = "int8_static"
# Runtimes that can execute the QDQ file; the gate measures the one `auto` would pick.
INT8_BACKENDS = ("openvino-int8", "onnx-int8-static")


def _views(paths: Sequence[str], cfg: DetectorConfig) -> list[np.ndarray]:
    from models.preprocess import ImageError, decode_image, eval_views

    out = []
    for path in paths:
        try:
            out.append(eval_views(decode_image(path)[0], cfg.preprocess))
        except (ImageError, OSError):  # an unreadable file is skipped, as training does
            continue
    return out


def quantize_static(src: Path, dst: Path, calibration: list[np.ndarray]) -> None:
    """QDQ int8 copy of `src` with activation ranges from `calibration` (normalised views)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    from models.metadata import INPUT_NAME

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
        ort_quantize_static(
            str(src), str(dst), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )
    finally:
        root.setLevel(level)


def fpr_at_threshold(labels: np.ndarray, probs: np.ndarray, cfg: DetectorConfig) -> float:
    from models.verdict import is_flagged

    reals = labels == 0
    return float(np.mean(is_flagged(probs[reals], cfg))) if reals.any() else float("nan")


def gate(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray, cfg: DetectorConfig) -> dict[str, Any]:
    """The verdict-keeping check on one set of validation probabilities, both ways."""
    from models.metrics import roc_auc

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
    from models.runtime import BACKENDS, Detector

    det = Detector(cfg, BACKENDS[backend](folder, cfg, "cpu"), str(folder))
    return np.concatenate([det.probabilities_from_views(views[i : i + 32]) for i in range(0, len(views), 32)])


def speeds(folder: Path, cfg: DetectorConfig, names: Sequence[str], views: list[np.ndarray],
           rounds: int = 2) -> dict[str, float]:
    """img/s of each backend on the same views (batch 32), interleaved so load hits all alike."""
    import time

    from models.runtime import BACKENDS, Detector

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
    from models.runtime import default_backend

    return default_backend(folder, "cpu", int8=False)


def int8_candidates() -> list[str]:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return ["onnx-int8-static"]
    return list(INT8_BACKENDS)


def add_int8_static(folder: str | Path, calib: Sequence[str], val: Sequence[tuple[str, int]],
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Quantise EXP's model.onnx, gate it on `val`, record the result in metadata.json."""
    from models.checkpoint import CONFIG
    from models.metadata import ONNX_FILE, read_metadata, write_metadata

    folder = Path(folder)
    if not (folder / ONNX_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {ONNX_FILE}; run `fakelens export` first")
    if not val:
        raise ValueError("the gate needs labelled validation images (DATA's val split is empty)")
    cfg = DetectorConfig.load(folder / CONFIG)
    meta = read_metadata(folder)
    tmp = folder / f".{INT8_STATIC_FILE}.tmp"
    quantize_static(folder / ONNX_FILE, tmp, _views(calib, cfg))
    tmp.replace(folder / INT8_STATIC_FILE)
    labels, views = [], []
    for path, label in val:
        v = _views([path], cfg)
        if v:
            views.append(v[0])
            labels.append(label)
    default = float_default(folder)
    rates = speeds(folder, cfg, [default, *int8_candidates()], views)
    backend = max(int8_candidates(), key=rates.__getitem__)  # the faster int8 runtime is the one gated
    result = gate(_probabilities(folder, cfg, "onnx", views), _probabilities(folder, cfg, backend, views),
                  np.asarray(labels), cfg)
    # int8 that keeps the verdicts but runs slower than the float default is not worth offering
    # (OpenVINO bf16 on AMX often is: docs/performance.md)
    result.update(faster=bool(rates[backend] > rates[default]), img_s={**rates}, float_default=default)
    result.update(backend=backend, file=INT8_STATIC_FILE, calibration_images=len(calib),
                  method="onnxruntime quantize_static QDQ, per-channel s8 weights, u8 activations, MinMax, "
                         + "/".join(QUANTIZED_OPS))
    meta[META_KEY] = result
    write_metadata(folder, meta)
    if result["passed"] and result["faster"]:
        verdict = "offered by auto"
    elif result["passed"]:
        verdict = f"verdicts hold but it is slower than {default} here: NOT offered ({default} stays)"
    else:
        verdict = f"NOT offered ({default} stays the default)"
    log(f"int8 static ({backend}, {rates[backend]:.1f} img/s vs {default} {rates[default]:.1f}): val AUC {result['auc_int8']:.4f} vs fp32 {result['auc_fp32']:.4f} "
        f"(drop {result['auc_drop']:+.4f}, bound {MAX_AUC_DROP}); FPR at threshold {result['fpr_int8']:.2%} vs "
        f"{result['fpr_fp32']:.2%} ({result['fpr_move_points']:.2f} points, bound {MAX_FPR_MOVE_POINTS}): {verdict}")
    return result


def openvino_int8_backend(folder: Path, cfg: DetectorConfig, device: str):
    """OpenVINO reading the QDQ file: its int8 kernels (VNNI/AMX) run the quantised ops, the
    rest runs at the CPU's usual precision (bf16 where available), as backend 'openvino' does."""
    from models.backends import OpenVinoBackend, _artifact, cpu_has_bf16

    path = _artifact(folder, INT8_STATIC_FILE, "run `python -m models.quantize EXP --data DATA`")
    return OpenVinoBackend(path, cfg, device, "openvino-int8", "bf16" if cpu_has_bf16() else "f32")


def onnx_int8_static_backend(folder: Path, cfg: DetectorConfig, device: str):
    from models.backends import OrtBackend, _artifact

    path = _artifact(folder, INT8_STATIC_FILE, "run `python -m models.quantize EXP --data DATA`")
    return OrtBackend(path, cfg, device, "onnx-int8-static")


def specs() -> list:
    """Registry rows for the two runtimes of the QDQ file (models.backends.BackendSpec)."""
    from models.backends import BackendSpec

    how = "export with `fakelens export ... --data DATA --int8-static` (or python -m models.quantize)"
    # The gate on validation data is the real check; the parity bound only catches a broken graph.
    return [BackendSpec("openvino-int8", openvino_int8_backend, INT8_STATIC_FILE, "int8", ("cpu",),
                        prob_bound=5e-2, rejects_export=False, how_to_get=how),
            BackendSpec("onnx-int8-static", onnx_int8_static_backend, INT8_STATIC_FILE, "int8", ("cpu",),
                        prob_bound=5e-2, rejects_export=False, how_to_get=how)]


def offered_backend(meta: dict[str, Any]) -> str | None:
    """The int8 runtime `auto` may pick for an export: None unless the gate passed and it was faster."""
    record = meta.get(META_KEY)
    if (isinstance(record, dict) and record.get("passed") is True and record.get("faster") is True
            and record.get("backend") in INT8_BACKENDS):
        return record["backend"]
    return None


def calibration_paths(data: str, limit: int) -> list[str]:
    """Up to `limit` train-split images, evenly spaced so every source/generator is represented."""
    from models.dataset import list_samples

    paths = [s.path for s in list_samples(data, split="train")]
    if not paths:
        raise ValueError(f"dataset {data} has no train split images to calibrate on")
    if len(paths) > limit:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).astype(int)]
    return paths


def main(argv: list[str] | None = None) -> int:
    from models.cli import _val_samples

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", help="export folder (with model.onnx)")
    ap.add_argument("--data", required=True, help="dataset folder/manifest: train split calibrates, val gates")
    ap.add_argument("--calib", type=int, default=256, help="calibration images (default 256)")
    args = ap.parse_args(argv)
    add_int8_static(args.export, calibration_paths(args.data, args.calib), _val_samples(args.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
