"""Video: sample frames with PyAV, score them in batches, aggregate with a per-frame timeline.

    frames = sample_frames(data, Sampling(frames=16), VideoLimits())
    plans = frame_plans(frames, cfg.preprocess, faces=False)
    probs = detector.probabilities_from_views([v for p in plans for v in p.views])
    answer = summarize_video(frames, plans, probs, cfg, aggregate="mean")

PyAV (`av`) bundles FFmpeg, so every container and codec FFmpeg reads is accepted; what
it cannot open is an `unsupported` VideoError, a stream that breaks before any frame is
decoded is `corrupt`. Sampling is N frames uniform in time or a rate per second; each
target time is reached by seeking to the keyframe before it and decoding forward, so a
long video costs about one GOP per sampled frame rather than a full decode.
`keyframes=True` decodes keyframes only (cheapest, the best-quality frames of most
encoders) and takes the keyframe nearest each target. Limits on duration, sampled frames
and frame pixels raise VideoError kinds the service maps to 413.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models.core.config import DetectorConfig, PreprocessConfig
from models.core.preprocess import eval_views
from models.core.verdict import is_flagged, label_for
from models.evidence.faces import FacePlan, plan_faces, summarize

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ts", ".3gp")
# The verdict is taken on one of these; share_flagged (frames at or above the threshold) is reported only.
AGGREGATES = ("mean", "max")


class VideoError(ValueError):
    """A video that cannot be scored. `kind` is one of KINDS; the message says what to do."""

    KINDS = ("empty", "unsupported", "corrupt", "too_long", "too_many_frames", "too_many_pixels", "bad_option")

    def __init__(self, kind: str, message: str):
        assert kind in self.KINDS, kind
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class VideoLimits:
    max_seconds: float = 600.0
    max_frames: int = 64  # sampled frames per video
    max_pixels: int = 8_294_400  # per frame: 3840 x 2160


@dataclass(frozen=True)
class Sampling:
    frames: int | None = 16  # N frames uniform in time ...
    per_second: float | None = None  # ... or this many per second (wins when given)
    keyframes: bool = False

    def targets(self, duration: float) -> list[float]:
        if self.per_second is not None:
            if self.per_second <= 0:
                raise VideoError("bad_option", f"per_second={self.per_second}; it must be > 0")
            n = max(1, int(duration * self.per_second))
        else:
            if self.frames is None or self.frames < 1:
                raise VideoError("bad_option", f"frames={self.frames}; it must be >= 1")
            n = self.frames
        return [(k + 0.5) * duration / n for k in range(n)]


@dataclass(frozen=True)
class Frame:
    index: int  # position in the sample
    time_s: float
    keyframe: bool
    image: Image.Image


@dataclass(frozen=True)
class VideoFacts:
    container: str
    codec: str
    width: int
    height: int
    duration_s: float
    fps: float | None


def is_video_path(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


def _open(data: bytes):
    import av

    if not data:
        raise VideoError("empty", "the upload is empty (0 bytes); send the video file's bytes")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, OSError) as e:
        raise VideoError("unsupported", f"the bytes are not a video container FFmpeg can read ({e}); "
                         "send MP4, MOV, WebM, MKV or AVI") from None
    if container.format.name == "image2" or container.format.name.endswith("_pipe"):
        name = container.format.name
        container.close()
        raise VideoError("unsupported", f"the file is a still image ({name}), not a video; send it to /detect "
                         "(or `fakelens score`) instead")
    if not container.streams.video:
        container.close()
        raise VideoError("unsupported", "the file has no video stream (audio only?); send a video")
    return container


def _facts(container, stream) -> VideoFacts:
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    fps = float(stream.average_rate) if stream.average_rate else None
    if not duration and stream.frames and fps:
        duration = stream.frames / fps
    if not duration or duration <= 0:
        raise VideoError("corrupt", "the video's duration is unknown; remux it (ffmpeg -i in -c copy out.mp4)")
    ctx = stream.codec_context
    return VideoFacts(container.format.name, ctx.name, ctx.width, ctx.height, round(duration, 3), fps)


def _decoded(container, stream, keyframes: bool):
    """Frames as (time_s, keyframe, av.VideoFrame), in decode order."""
    if keyframes:
        stream.codec_context.skip_frame = "NONKEY"
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        yield float(frame.pts * stream.time_base), bool(frame.key_frame), frame


def _seek(container, stream, t: float) -> bool:
    import av

    try:
        container.seek(int(t / stream.time_base), stream=stream, backward=True, any_frame=False)
        return True
    except (av.FFmpegError, OSError):
        return False


def sample_frames(data: bytes, sampling: Sampling, limits: VideoLimits) -> tuple[VideoFacts, list[Frame]]:
    """Decode the sampled frames of a video (RGB), checking the limits before decoding."""
    import av

    container = _open(data)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        facts = _facts(container, stream)
        if facts.duration_s > limits.max_seconds:
            raise VideoError("too_long", f"the video lasts {facts.duration_s:.1f} s, above the limit of "
                             f"{limits.max_seconds:.0f} s; cut it (ffmpeg -t) or raise FAKELENS_MAX_VIDEO_SECONDS")
        if facts.width * facts.height > limits.max_pixels:
            raise VideoError("too_many_pixels", f"frames are {facts.width}x{facts.height}, above the limit of "
                             f"{limits.max_pixels:,} pixels; downscale the video")
        targets = sampling.targets(facts.duration_s)
        if len(targets) > limits.max_frames:
            raise VideoError("too_many_frames", f"the sampling asks for {len(targets)} frames, above the limit of "
                             f"{limits.max_frames}; ask for fewer frames or a lower per_second")
        picked = _pick(container, stream, targets, sampling.keyframes)
    except av.FFmpegError as e:
        raise VideoError("corrupt", f"the video stream is corrupt ({e}); re-encode or re-upload it") from None
    finally:
        container.close()
    if not picked:
        raise VideoError("corrupt", "no frame could be decoded from the video stream; re-encode or re-upload it")
    frames = [Frame(i, round(t, 3), key, f.to_image()) for i, (t, key, f) in enumerate(picked)]
    return facts, frames


def _pick(container, stream, targets: list[float], keyframes: bool) -> list:
    """One decoded frame per target time (duplicates dropped: sparse keyframes can serve two targets)."""
    picked, seen = [], set()
    if keyframes:
        # Keyframes are few; one pass over them, the nearest to each target wins.
        keys = list(_decoded(container, stream, keyframes=True))
        for t in targets:
            best = min(keys, key=lambda k: abs(k[0] - t), default=None)
            if best is not None and best[0] not in seen:
                seen.add(best[0])
                picked.append(best)
        return picked
    for t in targets:
        if not _seek(container, stream, t):
            break
        last = None
        for item in _decoded(container, stream, keyframes=False):
            last = item
            if item[0] >= t - 1e-6:
                break
        if last is not None and last[0] not in seen:
            seen.add(last[0])
            picked.append(last)
    return picked


def frame_plans(frames: list[Frame], pre: PreprocessConfig, faces: bool) -> list[FacePlan]:
    """What to score per frame: its views, or its face crops' views in face mode."""
    if faces:
        return [plan_faces(f.image, pre) for f in frames]
    return [FacePlan(faces=[], views=[eval_views(f.image, pre)]) for f in frames]


def summarize_video(facts: VideoFacts, frames: list[Frame], plans: list[FacePlan], probabilities,
                    cfg: DetectorConfig, aggregate: str = "mean", faces: bool = False) -> dict:
    """Aggregates (mean, max, share flagged), the verdict on the chosen one, and the per-frame timeline."""
    if aggregate not in AGGREGATES:
        raise VideoError("bad_option", f"aggregate={aggregate!r}; choose one of {AGGREGATES}")
    probs = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    timeline, scores, start = [], [], 0
    for frame, plan in zip(frames, plans, strict=True):
        part = probs[start : start + len(plan.views)]
        start += len(plan.views)
        row = {"index": frame.index, "time_s": frame.time_s, "keyframe": frame.keyframe}
        if faces:
            face_summary = summarize(plan, part, cfg)
            row.update(face_summary)
            score = face_summary["score"]
        else:
            score = float(part[0])
        row["score"], row["label"] = score, label_for(score, cfg)
        scores.append(score)
        timeline.append(row)
    arr = np.asarray(scores)
    stats = {"mean": float(arr.mean()), "max": float(arr.max()), "share_flagged": float(is_flagged(arr, cfg).mean())}
    chosen = stats[aggregate]
    label = label_for(chosen, cfg)
    return {"label": label, "score": chosen, "aggregate": aggregate, **stats, "frames_scored": len(frames),
            "video": {"container": facts.container, "codec": facts.codec, "width": facts.width,
                      "height": facts.height, "duration_s": facts.duration_s, "fps": facts.fps},
            "timeline": timeline}
