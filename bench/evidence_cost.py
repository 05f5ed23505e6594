"""Cost of the evidence features on this machine, per image or per second of video.

    .venv/bin/python bench/evidence_cost.py                       # vit_small_patch16_224, ONNX Runtime
    .venv/bin/python bench/evidence_cost.py --arch efficientnet_lite0 --data /work/shared/datasets/realfake-dev
    .venv/bin/python bench/evidence_cost.py --model default --n 16 --rounds 2   # the shipped detector

A random-weight detector of `--arch` at 224 px (or `--model`, any folder/tag/"default") is saved and exported (so `backend=auto` runs
the shipped CPU runtime), then each feature is timed on the same inputs, medians of
`--rounds` runs, with the plain score measured in the same run as the baseline:
- score: decode + views + model (what /detect does per image);
- provenance: models.evidence.provenance.read_provenance on the file bytes (plain and C2PA-signed);
- faces: yuface detection on the decoded image (face mode adds one model view per face);
- explain: the occlusion heatmap at the default 7 x 7 grid (50 forwards per view);
- video: sampling + scoring 1 frame per second of a 720p H.264 clip encoded here,
  uniform-seek and keyframes-only, reported per second of video.
With --data, the first --n images of the folder/manifest are used (and the share of them
with a face or with provenance metadata is printed); otherwise synthetic 512 px JPEGs.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.core.checkpoint import save_model_dir  # noqa: E402
from models.core.config import DetectorConfig, PreprocessConfig  # noqa: E402
from models.core.network import build_network  # noqa: E402
from models.core.preprocess import decode_image, eval_views  # noqa: E402
from models.evidence.explain import explain  # noqa: E402
from models.evidence.faces import find_faces  # noqa: E402
from models.evidence.provenance import read_provenance  # noqa: E402
from models.evidence.video import Sampling, VideoLimits, frame_plans, sample_frames  # noqa: E402
from models.runtime.export import ExportOptions, export_model  # noqa: E402
from models.runtime.loader import load_detector  # noqa: E402
from service.inputs import discover_inputs  # noqa: E402
from tests.media_helpers import c2pa_signed_jpeg  # noqa: E402


def median_ms(fn, items, rounds: int) -> float:
    runs = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for it in items:
            fn(it)
        runs.append((time.perf_counter() - t0) * 1000 / len(items))
    return statistics.median(runs)


def clip_720p(seconds: int, fps: int = 25) -> bytes:
    import av

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (720 // 8, 1280 // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 1280, 720, "yuv420p"
        s.codec_context.gop_size = 2 * fps
        for i in range(seconds * fps):
            for p in s.encode(av.VideoFrame.from_ndarray(np.roll(base, 4 * i, axis=1), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vit_small_patch16_224")
    ap.add_argument("--model", default=None, help="an existing detector instead of a random-weight --arch")
    ap.add_argument("--data", default=None)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--video-seconds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        det = load_detector(args.model, "auto", "cpu")
    else:
        work = Path(tempfile.mkdtemp(prefix="evidence-bench-"))
        torch.manual_seed(0)
        cfg = DetectorConfig(arch=args.arch, preprocess=PreprocessConfig(img_size=224), version="bench")
        save_model_dir(work / "ckpt", build_network(cfg), cfg)
        export_model(work / "ckpt", work / "exp", ExportOptions(), log=lambda _: None)
        det = load_detector(work / "exp", "auto", "cpu")
    print(f"# {det.config.arch} {det.config.preprocess.img_size} px, backend {det.backend.name}, "
          f"{args.threads} threads")

    if args.data:
        files = [Path(p).read_bytes() for p in discover_inputs([args.data])[: args.n]]
    else:
        rng = np.random.default_rng(0)
        files = []
        for _ in range(args.n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
            files.append(buf.getvalue())
    decoded = [decode_image(b)[0] for b in files]
    sizes = sorted({im.size for im in decoded})
    print(f"# {len(files)} images, sizes {sizes[:3]}{' ...' if len(sizes) > 3 else ''}")

    def score(data: bytes) -> None:
        det.probabilities_from_views([eval_views(decode_image(data)[0], det.config.preprocess)])

    base = median_ms(score, files, args.rounds)
    print(f"score (decode + model): {base:.1f} ms/image")
    prov = median_ms(read_provenance, files, args.rounds)
    signed = [c2pa_signed_jpeg()] * 10
    prov_signed = median_ms(read_provenance, signed, args.rounds)
    declared = sum(read_provenance(b)["declared_ai"] or read_provenance(b)["c2pa"]["present"] for b in files)
    print(f"provenance: {prov:.2f} ms/image (plain files), {prov_signed:.2f} ms (C2PA-signed JPEG); "
          f"{declared}/{len(files)} images carry C2PA or a generative-AI declaration")
    faces = median_ms(find_faces, decoded, args.rounds)
    found = sum(bool(find_faces(im)) for im in decoded)
    print(f"face detection: {faces:.1f} ms/image ({faces / base:.2f}x a plain score); faces in {found}/{len(files)}")
    few = decoded[: max(2, len(decoded) // 8)]
    heat = median_ms(lambda im: explain(det, im), few, 1)
    print(f"explain (7x7 occlusion): {heat:.0f} ms/image ({heat / base:.1f}x a plain score)")

    clip = clip_720p(args.video_seconds)
    for name, sampling in (("1 frame/s, seek", Sampling(per_second=1)),
                           ("1 frame/s, keyframes only", Sampling(per_second=1, keyframes=True))):
        def run(data: bytes, sampling=sampling) -> None:
            _, frames = sample_frames(data, sampling, VideoLimits())
            plans = frame_plans(frames, det.config.preprocess, faces=False)
            det.probabilities_from_views([v for p in plans for v in p.views])

        ms = median_ms(run, [clip], args.rounds)
        t0 = time.perf_counter()
        sample_frames(clip, sampling, VideoLimits())
        decode = (time.perf_counter() - t0) * 1000
        print(f"video 720p H.264 {name}: {ms / args.video_seconds:.0f} ms per second of video "
              f"(decode+sample alone {decode / args.video_seconds:.0f} ms/s)")


if __name__ == "__main__":
    main()
