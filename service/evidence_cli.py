"""`fakelens inspect` and `fakelens explain`: the service's evidence answers for one local file.

    fakelens inspect photo.jpg [--faces] [--model M]           # the /detect answer, with provenance
    fakelens inspect clip.mp4 [--frames 16 | --per-second 1] [--keyframes] [--aggregate max] [--faces]
    fakelens explain photo.jpg -o heat.png [--grid 7] [--json heat.json]

Both print the same JSON the HTTP endpoints answer (/detect, /detect_video, /explain),
computed locally with the detector from --model (default: $FAKELENS_MODEL or the store's
fakelens-detector:latest) through service/evidence.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _model_default() -> str:
    from service.settings import ServeSettings

    return ServeSettings.from_env().model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="score one image or video with provenance (and faces), print the JSON")
    p.add_argument("file", help="an image or a video file")
    p.add_argument("--model", default=None, help="model/run/export folder or store tag")
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--faces", action="store_true", help="score each face crop; the score is the max over faces")
    p.add_argument("--frames", type=int, default=16, help="videos: frames sampled uniformly (default 16)")
    p.add_argument("--per-second", type=float, default=None, help="videos: sample this many frames per second")
    p.add_argument("--keyframes", action="store_true", help="videos: decode keyframes only")
    p.add_argument("--aggregate", choices=("mean", "max"), default="mean", help="videos: verdict on mean or max")
    p.add_argument("-o", "--out", default=None, help="write the JSON here instead of stdout")
    p.set_defaults(run=run_inspect)

    e = sub.add_parser("explain", help="heatmap of where the evidence is (occlusion relevance), as a PNG overlay")
    e.add_argument("image")
    e.add_argument("-o", "--out", required=True, help="overlay PNG to write")
    e.add_argument("--json", default=None, help="also write the full answer (grid included) as JSON here")
    e.add_argument("--grid", type=int, default=7, help="cells per side of each model view (default 7)")
    e.add_argument("--model", default=None, help="model/run/export folder or store tag")
    e.add_argument("--backend", default="auto")
    e.add_argument("--device", default="auto")
    e.set_defaults(run=run_explain)


def _emit(answer: dict, out: str | None) -> None:
    text = json.dumps(answer, indent=2)
    if out:
        Path(out).write_text(text + "\n")
    else:
        print(text)


def _local(detector) -> dict:
    return {k: detector.info[k] for k in ("name", "version", "backend", "device")}


def inspect_file(path: str, detector, faces: bool = False, sampling=None, aggregate: str = "mean") -> dict:
    """The /detect (or /detect_video) answer for one local file."""
    from models.evidence.video import Sampling, VideoLimits, is_video_path
    from models.runtime.prepare import Limits
    from service import evidence
    from service.verdict import prepare_upload, verdict

    cfg = detector.config
    data = Path(path).read_bytes()
    if is_video_path(path):
        item = evidence.plan_video(data, cfg, sampling or Sampling(), VideoLimits(), faces)
        rows = detector.scores_from_views(item.views)
        return evidence.answer_video(item, rows, cfg, _local(detector), aggregate, faces)
    if faces:
        item = evidence.plan_face_mode(data, cfg, Limits())
        return evidence.answer_face_mode(item, detector.scores_from_views(item.plan.views), cfg,
                                         _local(detector))
    item = prepare_upload(data, cfg, Limits())  # a local file is as large as it is; pixels are still limited
    [row] = detector.scores_from_views([item.views])
    return verdict(row, item.facts, cfg, _local(detector), item.provenance)


def explain_file(path: str, detector, grid: int) -> tuple[dict, object]:
    """The /explain answer (without the base64 overlay) and the overlay image for one local file."""
    import numpy as np
    import torch

    from models.evidence.explain import overlay
    from models.runtime.prepare import Limits
    from service import evidence

    cfg = detector.config
    item = evidence.plan_explain(Path(path).read_bytes(), cfg, Limits(), grid)
    base = detector.view_outputs(torch.from_numpy(item.views))  # verdict and family outputs
    occluded = np.concatenate([detector.view_logits(torch.from_numpy(item.occluded[i : i + 32]))
                               for i in range(0, len(item.occluded), 32)])
    answer, heat = evidence.answer_explain(item, base, occluded, cfg, _local(detector), with_overlay=False)
    return answer, overlay(item.rgb, heat)


def _detector(args):
    from models.runtime.loader import load_detector

    return load_detector(args.model or _model_default(), args.backend, args.device)


def _user_errors(fn):
    """Service errors (bad file, limits) become the CLI's usage errors (exit 2, message on stderr)."""
    from service.errors import ServiceError

    try:
        return fn()
    except ServiceError as e:
        raise ValueError(f"{e.kind}: {e.message}") from None


def run_inspect(args: argparse.Namespace) -> int:
    from models.evidence.video import Sampling

    if not Path(args.file).is_file():
        raise FileNotFoundError(f"{args.file} does not exist")
    detector = _detector(args)
    sampling = Sampling(frames=args.frames, per_second=args.per_second, keyframes=args.keyframes)
    answer = _user_errors(lambda: inspect_file(args.file, detector, args.faces, sampling, args.aggregate))
    _emit(answer, args.out)
    return 0


def run_explain(args: argparse.Namespace) -> int:
    if not Path(args.image).is_file():
        raise FileNotFoundError(f"{args.image} does not exist")
    detector = _detector(args)
    answer, image = _user_errors(lambda: explain_file(args.image, detector, args.grid))
    image.save(args.out, format="PNG")
    if args.json:
        _emit(answer, args.json)
    heat = answer["heatmap"]
    print(f"fakelens explain: {answer['label']} (score {answer['score']:.3f}); {heat['rows']}x{heat['cols']} "
          f"cells of {heat['cell_px']:.0f} px -> {args.out}", file=sys.stderr)
    return 0
