"""`fakelens export` and `fakelens models list|show`: export, verify and store detectors.

    fakelens export RUN_OR_MODEL_DIR --out EXP [--int8] [--fp16] [--no-store] [--version V] [--data DATA]
                    [--int8-static]
    fakelens quantize EXP|default --data DATA [--calib 256]
    fakelens models list
    fakelens models show fakelens-detector:latest
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX + TorchScript, verify parity, store it")
    p.add_argument("checkpoint", help="run folder (uses best/) or model folder")
    p.add_argument("--out", required=True, help="export folder to write (replaced atomically)")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (ORT dynamic quantization)")
    p.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (for GPUs)")
    p.add_argument("--no-store", action="store_true", help="do not register the export in the BentoML store")
    p.add_argument("--version", default="", help="model version (default: detector.json's, else a timestamp)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--data", help="dataset folder/manifest: measure the int8/fp16 AUC change on its val split")
    p.add_argument("--int8-static", action="store_true",
                   help="also write static int8 copies (calibrated on --data's train split) and gate them on "
                        "its val split; `auto` uses one only if AUC and FPR at the threshold hold (models/runtime/quantize.py)")
    p.add_argument("--calib", type=int, default=256, help="calibration images for --int8-static (default 256)")
    p.set_defaults(run=run_export)

    q = sub.add_parser("quantize", help="static int8 of an export, offered by `auto` only if it keeps the verdicts "
                                        "on --data's val split and is faster")
    q.add_argument("export", help="export folder, or `default` for the built-in detector's cached export")
    q.add_argument("--data", required=True, help="dataset folder/manifest: train split calibrates, val split gates")
    q.add_argument("--calib", type=int, default=256, help="calibration images (default 256)")
    q.set_defaults(run=run_quantize)

    m = sub.add_parser("models", help="list or show detectors in the BentoML model store")
    msub = m.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    msub.add_parser("list", help="list stored detectors").set_defaults(run=run_list)
    show = msub.add_parser("show", help="show one stored detector")
    show.add_argument("tag", help="e.g. fakelens-detector:latest")
    show.set_defaults(run=run_show)


def run_quantize(args: argparse.Namespace) -> int:
    from models.core.dataset import val_samples
    from models.runtime.quantize import add_int8_static, calibration_paths

    folder = args.export
    if folder == "default" and not Path(folder).exists():
        from models.runtime.loader import ensure_export

        folder = ensure_export()
    add_int8_static(folder, calibration_paths(args.data, args.calib), val_samples(args.data))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from models.core.dataset import val_samples
    from models.runtime.export import ExportOptions, export_model

    if args.opset < 17:
        raise ValueError(f"--opset {args.opset} is too old; use 17 or newer")
    options = ExportOptions(int8=args.int8, fp16=args.fp16, opset=args.opset, version=args.version)
    if args.int8_static and not args.data:
        raise ValueError("--int8-static needs --data DATA: real images to calibrate on and a val split to gate on")
    val = val_samples(args.data) if args.data else None
    export_model(args.checkpoint, args.out, options, val=val)
    if args.int8_static:
        from models.runtime.quantize import add_int8_static, calibration_paths

        add_int8_static(args.out, calibration_paths(args.data, args.calib), val)
    if not args.no_store:
        from models.runtime.store import register as store_register

        store_register(Path(args.out))
    return 0


def run_list(args: argparse.Namespace) -> int:
    from models.core.default_model import DEFAULT_DIR, default_config
    from models.runtime.store import list_models

    cfg = default_config()
    val = (cfg.metrics.get("val") or {}).get("auc")
    print(f"{'TAG':<44} {'CREATED':<20} {'SIZE':>8}  ARCH / VAL AUC")
    size = sum(f.stat().st_size for f in DEFAULT_DIR.iterdir()) / 1e6
    print(f"{'default (shipped, ' + cfg.version + ')':<44} {'-':<20} {size:>6.1f}MB  "
          f"{cfg.arch}+{cfg.head} {'' if val is None else f'{val:.4f}'} (head only; backbone {cfg.backbone_weights})")
    rows = list_models()
    if not rows:
        print("no exported detectors in the BentoML store yet; add one with `fakelens export CHECKPOINT --out EXP`")
        return 0
    for r in rows:
        labels = r["labels"]
        print(f"{r['tag']:<44} {r['created']:<20} {r['size_mb']:>6.1f}MB  {labels.get('arch', '')} "
              f"{labels.get('val_auc', '')}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from models.runtime.store import show

    print(json.dumps(show(args.tag), indent=2, sort_keys=True))
    return 0
