"""The local batch scorer behind `fakelens score`: parallel decode overlapped with batched inference.

    fakelens score photos/ more.csv -o scores.jsonl --model /tmp/export --batch-size 32 --workers 4

Worker threads read each input and run `models.runtime.prepare.prepare` on it (the same
decode-and-cut as the HTTP service; plain images come back as uint8 pixel views) while
the main thread runs the model on the previous batch. `--decode processes` (the `auto`
choice from 8 cores up) decodes in forkserver worker processes: decode threads hold the GIL
for part of their work and starve the thread that feeds the model on hosts where many cores
decode for a fast model; a uint8 view is only 0.15 MB to send back. At most `prefetch` batches are decoded ahead, which bounds memory. Rows come
out in input order and each batch is committed through `service.writers`, so a killed
job resumes exactly where it stopped when the same command is run again.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models.core.config import DetectorConfig
from models.core.preprocess import DEFAULT_MAX_PIXELS, ImageError, eval_views
from models.core.verdict import decide
from models.evidence.faces import FacePlan, plan_faces
from models.evidence.families import face_summary, family_fields, video_summary
from models.evidence.provenance import read_provenance
from models.evidence.video import (
    AGGREGATES,
    Sampling,
    VideoError,
    VideoLimits,
    frame_plans,
    is_video_path,
    sample_frames,
)
from models.runtime.jpeg_decode import prepare_raw, undecodable
from models.runtime.prepare import Limits, decode, prepare
from service.inputs import fingerprint, is_url, read_bytes
from service.writers import (
    JobHeader,
    JobState,
    Progress,
    finished_output,
    open_sink,
    output_format,
    state_dir,
)

DECODE_MODES = ("auto", "processes", "threads")
# Where JPEGs are decoded: by the decode workers (Pillow) or on the model's device from their
# bytes (models/runtime/jpeg_decode.py: nvJPEG on CUDA); auto = the device when the model is on CUDA.
DECODE_PLACES = ("auto", "workers", "device")
# `auto` decodes in processes from this many cores up. On 2 cores with uint8 views decoding
# is 5-10% of the work and processes showed no stable gain over threads (runs alternated,
# docs/performance.md) while adding their start-up; on a GPU host the CPU side is all
# decoding, and the GIL is what limits decode threads there.
PROCESS_DECODE_MIN_CORES = 8

# Pillow warns on stderr (once per worker) about images above ~89 Mpx; --max-pixels (40 Mpx by
# default) already refuses those with an error row that says how to raise it. Module level, so the
# forkserver's decode processes (which preload this module) are quiet too.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class OutputError(Exception):
    """OUT (or its state folder, or --heatmaps) cannot be written: one line for the user, exit 3."""


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class ScoreOptions:
    model: str
    backend: str = "auto"
    device: str = "auto"
    batch_size: int = 32
    workers: int = 0  # 0 = default_workers(); the Ray engine reads it as the actor count
    decode: str = "auto"  # how the local engine's workers run: DECODE_MODES
    decode_on: str = "auto"  # where JPEGs are decoded: DECODE_PLACES
    prefetch: int = 2  # batches decoded ahead of the model
    only_synthetic: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    overwrite: bool = False
    progress: bool = True
    faces: bool = False  # score face crops, max over faces (models/evidence/faces.py)
    sampling: Sampling = Sampling()  # video files: which frames (models/evidence/video.py)
    video_limits: VideoLimits = VideoLimits()
    aggregate: str = "mean"  # video verdict on the mean or max frame score
    heatmaps: str | None = None  # folder for one occlusion-heatmap PNG per image (models/evidence/explain.py)
    heat_grid: int = 7

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size={self.batch_size}; it must be at least 1")
        if self.workers < 0:
            raise ValueError(f"--workers={self.workers}; it must be at least 1 (or 0 for the default)")
        if self.decode not in DECODE_MODES:
            raise ValueError(f"--decode={self.decode!r}; choose one of {', '.join(DECODE_MODES)}")
        if self.decode_on not in DECODE_PLACES:
            raise ValueError(f"--decode-on={self.decode_on!r}; choose one of {', '.join(DECODE_PLACES)}")
        if self.max_pixels < 1:
            raise ValueError(f"--max-pixels={self.max_pixels}; it must be positive")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"--aggregate={self.aggregate!r}; choose one of {AGGREGATES}")


@dataclass(frozen=True)
class Summary:
    total: int
    scored: int
    flagged: int
    errors: int
    resumed_from: int
    wall_s: float
    already_complete: bool = False  # OUT was this job's finished output: nothing was rerun

    def line(self) -> str:
        if self.already_complete:
            return (f"already complete: {self.total} inputs, {self.scored} scored, {self.flagged} flagged synthetic, "
                    f"{self.errors} errors; nothing was rerun")
        resumed = f" (resumed after {self.resumed_from} done before)" if self.resumed_from else ""
        rate = (self.total - self.resumed_from) / self.wall_s if self.wall_s > 0 else 0.0
        return (
            f"{self.total} inputs{resumed}: {self.scored} scored, {self.flagged} flagged synthetic, "
            f"{self.errors} errors; {self.wall_s:.1f} s wall ({rate:.1f} img/s this run)"
        )


@dataclass(frozen=True)
class Prepared:
    """One input after decoding: its views, or the reason it cannot be scored.

    Plain images carry `views`; face mode and videos carry `plans` (one views array per
    face or frame) and, for videos, the sampled frames; all are scored in the same batch."""

    path: str
    views: np.ndarray | None
    width: int | None = None
    height: int | None = None
    error: str | None = None
    provenance: dict | None = None
    plans: list[FacePlan] | None = None
    video: tuple | None = None  # (VideoFacts, frames) for video files
    faces: bool = False  # face mode ran (plans hold face crops)
    image: Image.Image | None = None  # kept only when heatmaps are asked for
    jpeg: bytes | None = None  # instead of views: decoded on the model's device (decode_on="device")

    def all_views(self) -> list[np.ndarray]:
        if self.views is not None:
            return [self.views]
        return [v for p in self.plans or [] for v in p.views]


@dataclass(frozen=True)
class Evidence:
    """What to compute beside the plain score (ScoreOptions' evidence fields, for the decode workers)."""

    faces: bool = False
    sampling: Sampling = Sampling()
    video_limits: VideoLimits = VideoLimits()
    keep_image: bool = False
    raw_jpeg: bool = False  # JPEGs the model's device can decode keep their bytes (decode_on)

    @classmethod
    def of(cls, opts: ScoreOptions, device: str = "cpu") -> Evidence:
        raw = opts.decode_on == "device" or (opts.decode_on == "auto" and device == "cuda")
        return cls(opts.faces, opts.sampling, opts.video_limits, opts.heatmaps is not None, raw)


def read_and_prepare(path: str, cfg: DetectorConfig, limits: Limits, evidence: Evidence = Evidence()) -> Prepared:
    """Read one input and run models.runtime.prepare on it; a bad input becomes a row error, not an exception."""
    if not is_url(path) and os.path.isdir(path):  # service/inputs.py lists a folder only for a symlink loop
        return Prepared(path, None, error=f"symlink_loop: this folder links back to {os.path.realpath(path)}, "
                        "which is already being scored; its files are scored once, under their first path")
    try:
        data = read_bytes(path)
    except OSError as e:
        return Prepared(
            path, None, error=f"unreadable: {e.strerror or e}; check the path and its permissions"
        )
    try:
        return _prepare_image_or_video(path, data, cfg, limits, evidence)
    except Exception as e:  # noqa: BLE001 (one file's decoder failure must not end the job)
        # models.core.preprocess maps known decoder errors to ImageError; anything else a hostile file
        # provokes in a decoder still gets its own row, and the job goes on.
        return Prepared(path, None, error=f"truncated: the file could not be decoded ({type(e).__name__}: {e}); "
                        "re-export or re-upload it")


def _prepare_image_or_video(path: str, data: bytes, cfg: DetectorConfig, limits: Limits,
                            evidence: Evidence) -> Prepared:
    if is_video_path(path):
        return _prepare_video(path, data, cfg, evidence)
    try:
        if evidence.faces or evidence.keep_image:
            img, facts = decode(data, limits)
            provenance = read_provenance(data)
        else:
            item = (prepare_raw if evidence.raw_jpeg else prepare)(data, cfg, limits)
            return Prepared(path, item.views, item.facts.width, item.facts.height, provenance=item.provenance,
                            jpeg=item.jpeg)
    except ImageError as e:
        # An undecodable image can still declare itself generated; the row then says so.
        return Prepared(path, None, error=f"{e.kind}: {e}", provenance=read_provenance(data))
    kept = img if evidence.keep_image else None
    if evidence.faces:
        return Prepared(path, None, facts.width, facts.height, provenance=provenance,
                        plans=[plan_faces(img, cfg.preprocess)], faces=True, image=kept)
    return Prepared(path, eval_views(img, cfg.preprocess), facts.width, facts.height, provenance=provenance,
                    image=kept)


def _prepare_video(path: str, data: bytes, cfg: DetectorConfig, evidence: Evidence) -> Prepared:
    provenance = read_provenance(data)
    try:
        facts, frames = sample_frames(data, evidence.sampling, evidence.video_limits)
    except VideoError as e:
        return Prepared(path, None, error=f"{e.kind}: {e}", provenance=provenance)
    return Prepared(path, None, facts.width, facts.height, provenance=provenance,
                    plans=frame_plans(frames, cfg.preprocess, evidence.faces), video=(facts, frames),
                    faces=evidence.faces)


Scored = tuple[float, list[float], dict | None]  # (score, family row, detail) of one input


def _scored(it: Prepared, rows: np.ndarray, cfg, aggregate: str) -> Scored:
    """(score, family row, detail) of one input from the score rows of its views (service/evidence.py:
    the family of the max face in face mode, of the mean family logits for a video)."""
    if it.video is not None:
        summary, family_row = video_summary(*it.video, it.plans, rows, cfg, aggregate, faces=it.faces)
        return summary["score"], family_row, {k: summary[k] for k in ("aggregate", "mean", "max", "share_flagged",
                                                                      "frames_scored", "video", "timeline")}
    if it.plans is not None:
        faces, worst = face_summary(it.plans[0], rows, cfg)
        return faces["score"], list(worst), {k: v for k, v in faces.items() if k != "score"}
    return float(rows[0, 0]), list(rows[0]), None


def score_prepared(detector, items: Sequence[Prepared], aggregate: str = "mean") -> list[dict[str, Any]]:
    """Rows (writers.COLUMNS) for one batch; the model sees every decodable view at once."""
    cfg = detector.config
    items, scored_raw = _device_scored(detector, items)
    ok = [it for it in items if it.error is None and it.jpeg is None]
    counts = [len(it.all_views()) for it in ok]
    scores = detector.scores_from_views([v for it in ok for v in it.all_views()])
    offsets = np.cumsum([0, *counts])
    scored = {id(it): _scored(it, scores[offsets[i] : offsets[i + 1]], cfg, aggregate) for i, it in enumerate(ok)}
    scored.update(scored_raw)
    rows = []
    for it in items:
        score, family_row, detail = scored.get(id(it), (None, None, None))
        label, reason = (None, None)
        if score is not None or (it.provenance or {}).get("declared_ai"):
            label, reason = decide(score, cfg, it.provenance)
        rows.append(
            dict(
                path=it.path,
                score=score,
                label=label,
                threshold=float(cfg.threshold),
                model=cfg.name,
                model_version=cfg.version,
                width=it.width,
                height=it.height,
                error=it.error,
                reason=reason,
                provenance=it.provenance,  # objects here; JSON text only in CSV and Parquet (service/writers.py)
                detail=detail,
                # attributed on the final label: null for real, for error rows and without a family head
                **family_fields(label, family_row, cfg),
            )
        )
    return rows


def _device_scored(detector, items: Sequence[Prepared]) -> tuple[list[Prepared], dict[int, Scored]]:
    """Score the items sent as JPEG bytes in one batch on the model's device: (items, with a file the
    device could not decode turned into the error row the workers would give; {id: (score, row, None)})."""
    from dataclasses import replace

    raw = [it for it in items if it.error is None and it.jpeg is not None]
    if not raw:
        return list(items), {}
    scores = detector.scores_from_jpegs([it.jpeg for it in raw])
    bad = {id(it) for it, row in zip(raw, scores, strict=True) if np.isnan(row[0])}
    err = undecodable()
    error = f"{err.kind}: {err}"  # the row a worker's decode would have written
    items = [replace(it, jpeg=None, error=error, width=None, height=None) if id(it) in bad else it for it in items]
    return items, {id(it): (float(row[0]), list(row), None) for it, row in zip(raw, scores, strict=True)
                   if id(it) not in bad}


def add_heatmaps(detector, items: Sequence[Prepared], rows: list[dict[str, Any]], folder: Path, grid: int) -> None:
    """Write an occlusion-heatmap overlay per scored image and put its grid into the row's detail."""
    import hashlib

    from models.evidence.explain import explain, overlay

    folder.mkdir(parents=True, exist_ok=True)
    for it, row in zip(items, rows, strict=True):
        if it.image is None or row["score"] is None:
            continue
        heat = explain(detector, it.image, grid)
        # The path hash keeps same-named files from different folders apart; reruns overwrite in place.
        name = f"{Path(it.path).stem}-{hashlib.sha1(it.path.encode()).hexdigest()[:8]}.png"
        overlay(it.image, heat).save(folder / name)
        row["detail"] = {**(row["detail"] or {}), "heatmap": heat.to_dict(), "heatmap_png": str(folder / name)}


def job_header(cfg, inputs: Sequence[str], out: Path, only_synthetic: bool) -> JobHeader:
    return JobHeader(
        model=cfg.name,
        model_version=cfg.version,
        inputs=fingerprint(inputs),
        n_inputs=len(inputs),
        format=output_format(out),
        only_synthetic=only_synthetic,
    )


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    # disable=None turns the bar off when stderr is not a terminal (logs, CI, tests).
    return tqdm(
        total=total,
        initial=initial,
        unit="img",
        desc="scoring",
        disable=None if enabled else True,
        file=sys.stderr,
    )


def prepare_many(paths: Sequence[str], cfg: DetectorConfig, limits: Limits, evidence: Evidence) -> list[Prepared]:
    """`read_and_prepare` for a slice of a batch: one task per worker and batch keeps IPC per image low."""
    return [read_and_prepare(p, cfg, limits, evidence) for p in paths]


def decode_pool(mode: str, workers: int) -> Executor:
    if mode == "threads":
        return ThreadPoolExecutor(workers, thread_name_prefix="decode")
    # Not fork: forking a process whose torch/OpenVINO thread pools already run can deadlock
    # the child. forkserver starts one clean server per scoring process (reused by later
    # pools) and forks cheap workers from it with this module preloaded; spawn elsewhere.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["service.score"])
    else:
        ctx = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=ctx)


def decode_mode(opts: ScoreOptions, todo: Sequence[str]) -> str:
    # fsspec's memory:// filesystem lives in this process only: workers would not find the files
    if any(p.startswith("memory://") for p in todo):
        return "threads"
    # one batch has nothing to overlap with: starting processes would only add their start-up
    if len(todo) <= opts.batch_size:
        return "threads"
    # NOTE: faces, videos and heatmaps carry frames and images back; untested across processes
    if opts.faces or opts.heatmaps is not None or any(not _looks_like_image(p) for p in todo):
        return "threads"
    if opts.decode == "auto":
        return "processes" if (os.cpu_count() or 1) >= PROCESS_DECODE_MIN_CORES else "threads"
    return opts.decode


def _looks_like_image(path: str) -> bool:
    from service.inputs import IMAGE_EXTENSIONS

    return path.lower().endswith(IMAGE_EXTENSIONS)


def _slices(items: Sequence[str], parts: int) -> list[Sequence[str]]:
    step = -(-len(items) // parts)
    return [items[i : i + step] for i in range(0, len(items), step)]


def _run_batches(detector, todo: Sequence[str], opts: ScoreOptions, state: JobState, sink, bar) -> None:
    cfg, limits = detector.config, Limits(max_pixels=opts.max_pixels)
    evidence = Evidence.of(opts, detector.backend.device)
    batches = _chunks(todo, opts.batch_size)
    workers = opts.workers or default_workers()
    with decode_pool(decode_mode(opts, todo), workers) as pool:
        pending: deque[list[Future]] = deque()

        def submit_next() -> None:
            chunk = next(batches, None)
            if chunk is not None:
                pending.append([pool.submit(prepare_many, s, cfg, limits, evidence) for s in _slices(chunk, workers)])

        try:
            for _ in range(opts.prefetch + 1):
                submit_next()
            while pending:
                items = [it for f in pending.popleft() for it in f.result()]
                submit_next()  # decode the next batch while this one is on the model
                rows = score_prepared(detector, items, opts.aggregate)
                if opts.heatmaps is not None:
                    add_heatmaps(detector, items, rows, Path(opts.heatmaps), opts.heat_grid)
                kept = [r for r in rows if r["label"] == "synthetic"] if opts.only_synthetic else rows
                # Order matters: rows reach the disk (fsync) before the commit that counts them.
                state.commit(state.progress.advance(rows, sink.write(kept)))
                bar.update(len(rows))
        finally:
            for futures in pending:
                for f in futures:
                    f.cancel()


def already_complete(out: Path, header: JobHeader, inputs: Sequence[str], opts: ScoreOptions) -> Summary | None:
    """The Summary of a finished run of this same job at OUT (so a rerun succeeds), else None."""
    if opts.overwrite or not out.exists() or state_dir(out).exists():
        return None
    p = finished_output(out, header, list(inputs))
    if p is None:
        return None
    return Summary(len(inputs), p.scored, p.flagged, p.errors, len(inputs), 0.0, already_complete=True)


@contextlib.contextmanager
def output_errors(out: Path):
    """An OSError while writing the job's output becomes OutputError: one line saying what to do.

    Inputs never raise here (an unreadable input is its own error row), so an OSError is OUT's, its
    `OUT.partial/` state's or the heatmap folder's. A full disk stays an OSError: `fakelens` answers it
    with its own line and exit 3 (models/commands.py)."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(e):
            raise
        where = e.filename or out
        raise OutputError(f"cannot write {where}: {e.strerror or e}; choose an -o (and --heatmaps) on a writable "
                          "file system, then rerun the same command (an interrupted job resumes where it "
                          "stopped)") from None


def score_files(inputs: Sequence[str], out: str | Path, opts: ScoreOptions, detector=None) -> Summary:
    """Score `inputs` into OUT with the local engine, resuming an interrupted run of the same job.

    `detector` (already loaded from opts.model) lets a caller such as the benchmark reuse one.
    """
    from models.runtime.loader import load_detector

    start = time.perf_counter()
    out = Path(out)
    output_format(out)  # refuse a bad extension before loading a model
    detector = detector or load_detector(opts.model, opts.backend, opts.device)
    if opts.heatmaps is not None:
        from models.evidence.explain import cell_size

        cell_size(detector.config.preprocess, opts.heat_grid)  # a bad --heat-grid fails before any work
    header = job_header(detector.config, inputs, out, opts.only_synthetic)
    done = already_complete(out, header, inputs, opts)
    if done is not None:
        return done
    with output_errors(out):
        state = JobState(out, header, opts.overwrite)
        resumed_from = state.progress.done
        try:
            sink = open_sink(out, state.progress.position)
            try:
                with _progress_bar(len(inputs), resumed_from, opts.progress) as bar:
                    _run_batches(detector, inputs[resumed_from:], opts, state, sink, bar)
                sink.finish()
            finally:
                sink.close()
            state.finish()
        finally:
            state.close()
    p: Progress = state.progress
    return Summary(len(inputs), p.scored, p.flagged, p.errors, resumed_from, time.perf_counter() - start)
