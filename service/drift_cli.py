"""`fakelens drift`: has the score stream moved away from a reference? (docs/drift.md)

    fakelens drift REFERENCE CURRENT          # two streams
    fakelens drift CURRENT [--model MODEL]    # against the val-split reference stored in the model

A stream is a `fakelens score` output (.jsonl, .csv, .parquet; error rows are skipped), a saved
/metrics scrape of `fakelens serve`, or its live http(s)://HOST:PORT/metrics URL. Scrapes count
since the service started; `--since EARLIER_SCRAPE` compares only what came after EARLIER.

Printed: PSI over the fixed score buckets, KS distance and the shift of each verdict's share,
each with its level (none / moderate / drift) and whether it is beyond sampling noise.

Exit status (like diff): 0 no drift (moderate drift is printed but passes, unless
--fail-on moderate); 1 drift found; 2 an error (unreadable file, no stored reference, ...).
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_DRIFT = 1


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "drift",
        help="compare score streams (score files, /metrics scrapes) against a reference; exit 1 on drift",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("streams", nargs="+", metavar="STREAM", help="[REFERENCE] CURRENT: score file, scrape or URL")
    p.add_argument("--model", default="default",
                   help="with CURRENT alone: the model whose stored val-split reference to compare against "
                        "(model/run/export folder, model-store tag, or 'default', the shipped detector)")
    p.add_argument("--fake-share", type=float, default=None, metavar="P",
                   help="with CURRENT alone: reweight the stored reference to this share of fakes (0-1), the mix "
                        "you expect in production, instead of the val split's own mix")
    p.add_argument("--model-version", default=None,
                   help="CURRENT (and --since) holds several model versions: read this one")
    p.add_argument("--reference-version", default=None,
                   help="REFERENCE holds several model versions: read this one")
    p.add_argument("--since", default=None, metavar="EARLIER_SCRAPE",
                   help="CURRENT is a scrape: compare only the counts added since this earlier scrape")
    p.add_argument("--fail-on", choices=("moderate", "drift"), default="drift",
                   help="lowest level that exits 1 (default: drift)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from models.core.drift import LEVEL_ORDER, compare, read_stream, subtract

    if len(args.streams) > 2:
        raise ValueError(f"give one or two streams ([REFERENCE] CURRENT), not {len(args.streams)}")
    if len(args.streams) == 2 and args.fake_share is not None:
        raise ValueError("--fake-share reweights a model's stored reference: give CURRENT alone")
    current = read_stream(args.streams[-1], args.model_version)
    if args.since is not None:
        current = subtract(current, read_stream(args.since, args.model_version))
    if len(args.streams) == 2:
        reference = read_stream(args.streams[0], args.reference_version)
    else:
        reference = model_reference(args.model, args.fake_share)
    report = compare(reference, current)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    failed = LEVEL_ORDER.index(report.level) >= LEVEL_ORDER.index(args.fail_on)
    if failed:
        print("fakelens drift: the stream has moved; docs/drift.md says how to read it and what to do "
              "(recalibrate, collect the new source, retrain)", file=sys.stderr)
    return EXIT_DRIFT if failed else 0


def model_reference(model: str, fake_share: float | None):
    """The Stream of a model's stored reference, read from its detector.json only (no weights
    loaded, nothing exported or downloaded, even for the default detector)."""
    from models.core import default_model
    from models.core.drift import REFERENCE_KEY, reference_stream

    if default_model.is_default(model):
        cfg = default_model.default_config()
        where = "the default detector"
    else:
        from models.runtime.detector import locate

        folder, cfg = locate(model)
        where = str(folder)
    name = f"{where} ({cfg.name}:{cfg.version or 'unversioned'}, val split)"
    return reference_stream(cfg.metrics.get(REFERENCE_KEY), name, fake_share)
