"""The `fakelens evaluate` subcommand: flags -> EvalConfig -> training.evaluate.run_evaluation.

    fakelens evaluate RUN --data DATA --out REPORT [--split test] [--target-fpr 0.05]
                      [--batch-size 64] [--backend eager] [--recalibrate] [--no-robustness]

Heavy imports (torch, timm, matplotlib) happen inside `run` so `fakelens --help` stays fast.
"""

from __future__ import annotations

import argparse


def _fpr(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"--target-fpr {text} must be between 0 and 1 (e.g. 0.05)")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a positive integer")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a labelled split with a trained detector and write metrics, plots and robustness",
        description="Score a labelled split; writes REPORT/report.json, scores.csv and PNG plots.",
    )
    p.add_argument("model", metavar="MODEL", nargs="?", default="default",
                   help="run folder (uses best/), model folder, export folder, store tag, or 'default' (the shipped "
                        "detector; the default)")
    p.add_argument(
        "--data", required=True, action="append",
        help="dataset folder (real/, fake/<generator>/) or CSV/JSONL manifest; repeat for several",
    )
    p.add_argument(
        "--out", required=True, metavar="REPORT", help="folder for report.json, scores.csv and plots"
    )
    p.add_argument(
        "--split",
        choices=("train", "val", "test", "all"),
        default=None,
        help="split to score; 'all' scores every image (an outside labelled set with no split column). "
        "Default: test when the data has one, else every sample",
    )
    p.add_argument(
        "--target-fpr",
        type=_fpr,
        default=None,
        help="false-positive rate the threshold is chosen for (default: the model's stored one)",
    )
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument("--backend", default="auto",
                   help="runtime backend; auto (default) is what `fakelens serve` and `fakelens score` would use")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument(
        "--recalibrate",
        action="store_true",
        help="refit temperature and threshold on the val split and save them into the model",
    )
    p.add_argument("--no-robustness", action="store_true", help="skip the JPEG/downscale/blur grid")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from training.evaluate import EvalConfig, run_evaluation, summary_table

    cfg = EvalConfig(
        model=args.model,
        data=",".join(args.data),
        out=args.out,
        split=args.split,
        target_fpr=args.target_fpr,
        batch_size=args.batch_size,
        backend=args.backend,
        device=args.device,
        recalibrate=args.recalibrate,
        robustness=not args.no_robustness,
        plots=not args.no_plots,
    )
    report = run_evaluation(cfg)
    print(summary_table(report))
    print(f"wrote {args.out}/report.json")
    return 0
