"""`fakelens score`: offline batch scoring of files, folders, globs, manifests and fsspec URLs.

    fakelens score /data/imgs list.csv -o scores.jsonl --model /tmp/export [--batch-size 32] [--workers 4]
    fakelens score /data/imgs -o scores.parquet --model /tmp/export --engine ray [--ray-address ray://head:10001]

Rows carry the file's provenance and the reason for the label ("declared" when its own
metadata declares generative AI); `--faces` scores face crops (max over faces); video
files (.mp4, .mov, .webm, ...) are scored on sampled frames with a timeline in `detail`;
`--heatmaps DIR` writes an occlusion heatmap per image (docs/evidence.md).

Exit status: 0 when the job finished (undecodable images get rows with an `error`), also
when OUT already holds this same job's finished output ("already complete": nothing is
rerun, so a retry wrapper succeeds); 2 for a bad command (missing input, unknown model,
resume refused); 3 when the output cannot be written: the disk is full, or OUT is on a read-only
or otherwise unwritable file system (free space or choose another -o, then rerun the same command: it
resumes where it stopped); 130 when interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="score images offline into JSONL/CSV/Parquet (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders, globs, manifests (.csv/.jsonl/.txt) or URLs",
    )
    p.add_argument("-o", "--out", required=True, help="output file: .jsonl, .csv or .parquet")
    p.add_argument("--model", default="default",
                   help="model/run/export folder, model-store tag, or 'default' (the shipped detector; the default)")
    p.add_argument("--backend", default="auto", help="runtime backend (default: auto)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="decode threads (local) or actors (ray); 0 = auto")
    p.add_argument(
        "--decode",
        choices=("auto", "processes", "threads"),
        default="auto",
        help="local engine: decode in worker processes (no GIL contention with the model) or threads; "
        "auto = processes on hosts with 8+ cores",
    )
    p.add_argument("--decode-on", choices=("auto", "workers", "device"), default="auto",
                   help="where JPEGs are decoded: by the decode workers (Pillow) or from their bytes on the model's "
                        "device (nvJPEG on a GPU); auto = device when the model runs on CUDA")
    p.add_argument("--only-synthetic", action="store_true", help="write only rows flagged synthetic")
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument(
        "--ray-address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local one)"
    )
    p.add_argument(
        "--max-pixels", type=int, default=None, help="refuse images with more pixels (default 40M)"
    )
    p.add_argument("--faces", action="store_true", help="score each face crop; the score is the max over faces")
    p.add_argument("--video-frames", type=int, default=16, help="frames sampled uniformly per video (default 16)")
    p.add_argument("--video-per-second", type=float, default=None, help="sample this many frames per second instead")
    p.add_argument("--keyframes", action="store_true", help="videos: decode keyframes only (faster)")
    p.add_argument("--aggregate", choices=("mean", "max"), default="mean", help="video verdict on mean or max frame")
    p.add_argument("--max-video-frames", type=int, default=64, help="refuse videos needing more sampled frames")
    p.add_argument("--heatmaps", default=None, metavar="DIR",
                   help="write an occlusion-heatmap PNG per image here (grid in the row's detail; ~25x slower)")
    p.add_argument("--heat-grid", type=int, default=7, help="heatmap cells per side of each model view")
    p.add_argument("--overwrite", action="store_true", help="replace OUT instead of resuming into it")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from models.commands import EXIT_DISK_FULL
    from models.core.preprocess import DEFAULT_MAX_PIXELS
    from models.evidence.video import Sampling, VideoLimits
    from service.inputs import discover_inputs
    from service.score import OutputError, ScoreOptions

    opts = ScoreOptions(
        model=args.model,
        backend=args.backend,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        decode=args.decode,
        decode_on=args.decode_on,
        only_synthetic=args.only_synthetic,
        max_pixels=DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        faces=args.faces,
        sampling=Sampling(frames=args.video_frames, per_second=args.video_per_second, keyframes=args.keyframes),
        video_limits=VideoLimits(max_frames=args.max_video_frames),
        aggregate=args.aggregate,
        heatmaps=args.heatmaps,
        heat_grid=args.heat_grid,
    )
    inputs = discover_inputs(args.inputs)
    try:
        if args.engine == "ray":
            from service.ray_engine import score_files_ray

            summary = score_files_ray(inputs, args.out, opts, args.ray_address)
        else:
            from service.score import score_files

            summary = score_files(inputs, args.out, opts)
    except OutputError as e:
        print(f"fakelens score: error: {e}", file=sys.stderr)
        return EXIT_DISK_FULL  # the same status as a full disk: fix where OUT goes, rerun to resume
    except KeyboardInterrupt:
        print(
            f"fakelens score: interrupted; rerun the same command to resume into {args.out}", file=sys.stderr
        )
        return 130
    print(f"fakelens score: {summary.line()} -> {args.out}", file=sys.stderr)  # exit 0 for "already complete" too
    return 0
