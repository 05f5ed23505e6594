"""Video: PyAV sampling of clips encoded here, limits, broken containers, aggregation."""

from __future__ import annotations

import numpy as np
import pytest

from models.evidence.video import (
    Sampling,
    VideoError,
    VideoLimits,
    frame_plans,
    sample_frames,
    summarize_video,
)
from tests.conftest import tiny_config
from tests.media_helpers import encode_video, jpeg_bytes


@pytest.fixture(scope="module")
def clip():
    return encode_video(n=48, fps=24, gop=12)  # 2 s, a keyframe every 0.5 s, frame i has grey level 5*i


def grey(frame) -> int:
    return int(np.asarray(frame.image)[..., 0].mean().round())


def test_uniform_frames_are_the_ones_at_the_target_times(clip):
    facts, frames = sample_frames(clip, Sampling(frames=4), VideoLimits())
    assert (facts.codec, facts.width, facts.height, facts.duration_s, facts.fps) == ("h264", 64, 48, 2.0, 24.0)
    assert [f.time_s for f in frames] == [0.25, 0.75, 1.25, 1.75]
    # frame k shows grey 5*k (give or take the codec): the decoded pixels are the sampled frames' own
    assert [abs(grey(f) - 5 * round(f.time_s * 24)) <= 3 for f in frames] == [True] * 4


def test_per_second_and_keyframes(clip):
    _, frames = sample_frames(clip, Sampling(per_second=3), VideoLimits())
    assert len(frames) == 6
    _, keys = sample_frames(clip, Sampling(frames=8, keyframes=True), VideoLimits())
    assert [f.time_s for f in keys] == [0.0, 0.5, 1.0, 1.5] and all(f.keyframe for f in keys)


def test_webm_vp9_is_read_too():
    facts, frames = sample_frames(encode_video(n=12, fmt="webm", codec="libvpx-vp9"), Sampling(frames=2),
                                  VideoLimits())
    assert facts.codec == "vp9" and len(frames) == 2


@pytest.mark.parametrize("limits, sampling, kind", [
    (VideoLimits(max_seconds=1), Sampling(frames=4), "too_long"),
    (VideoLimits(max_frames=3), Sampling(frames=4), "too_many_frames"),
    (VideoLimits(max_frames=3), Sampling(per_second=2), "too_many_frames"),
    (VideoLimits(max_pixels=1000), Sampling(frames=1), "too_many_pixels"),
    (VideoLimits(), Sampling(frames=0), "bad_option"),
    (VideoLimits(), Sampling(per_second=-1.0), "bad_option"),
])
def test_limits_refuse_before_decoding(clip, limits, sampling, kind):
    with pytest.raises(VideoError) as e:
        sample_frames(clip, sampling, limits)
    assert e.value.kind == kind


@pytest.mark.parametrize("make, kind", [
    (lambda clip: b"", "empty"),
    (lambda clip: b"definitely not a video " * 40, "unsupported"),
    (lambda clip: jpeg_bytes(), "unsupported"),  # a still image: the message points to /detect
    (lambda clip: clip[: len(clip) // 2], "unsupported"),  # MP4 cut before its index
])
def test_broken_inputs_are_video_errors(clip, make, kind):
    with pytest.raises(VideoError) as e:
        sample_frames(make(clip), Sampling(frames=2), VideoLimits())
    assert e.value.kind == kind and str(e.value)


def test_truncated_stream_is_an_error_or_fewer_frames_never_a_crash():
    mkv = encode_video(n=48, fmt="matroska", codec="libx264")
    for cut in (len(mkv) // 3, len(mkv) // 2, len(mkv) - 50):
        try:
            _, frames = sample_frames(mkv[:cut], Sampling(frames=4), VideoLimits())
        except VideoError as e:
            assert e.kind in ("corrupt", "unsupported")
        else:
            assert 1 <= len(frames) <= 4


def test_summary_aggregates_and_timeline(clip):
    cfg = tiny_config()
    facts, frames = sample_frames(clip, Sampling(frames=4), VideoLimits())
    plans = frame_plans(frames, cfg.preprocess, faces=False)
    assert [len(p.views) for p in plans] == [1, 1, 1, 1]
    out = summarize_video(facts, frames, plans, [0.1, 0.2, 0.9, 0.4], cfg, aggregate="mean")
    assert out["mean"] == pytest.approx(0.4) and out["max"] == 0.9 and out["share_flagged"] == 0.25
    assert out["label"] == "real" and out["score"] == pytest.approx(0.4)
    assert [r["label"] for r in out["timeline"]] == ["real", "real", "synthetic", "real"]
    assert out["timeline"][2]["time_s"] == 1.25
    assert summarize_video(facts, frames, plans, [0.1, 0.2, 0.9, 0.4], cfg, aggregate="max")["label"] == "synthetic"
    with pytest.raises(VideoError):
        summarize_video(facts, frames, plans, [0.1] * 4, cfg, aggregate="median")
