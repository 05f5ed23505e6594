"""Serving settings: one frozen dataclass read from FAKELENS_* environment variables.

`bentoml serve` imports service/service.py in fresh worker processes, so the only way
`fakelens serve --max-batch-size 16` reaches the `@bentoml.api` decorator is through the
environment; `ServeSettings.from_env()` is called once, at import.

Defaults were chosen by measurement on a 2-core CPU (docs/performance-serving.md):
- max_latency_ms is BentoML's *deadline*, not a batching window: its dispatcher cancels
  (503) any request it predicts will finish later than this. 50 ms turned 326 of 400
  requests into 503s at 16 clients; 10 s lets overload queue instead, and the in-flight
  limit below bounds that queue.
- max_inflight caps concurrent /detect + /detect_batch requests being scored per front
  worker (a request takes its slot only once its body has arrived); the next one gets 503
  with Retry-After instead of waiting unboundedly.
- max_inflight_bytes caps the upload bytes a front worker holds for requests in progress
  (bodies are spooled to disk past 1 MiB each, but they are still read into memory to be
  decoded); body_timeout_s is how long a whole request body may take to arrive (then 408).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from models.core.preprocess import DEFAULT_MAX_PIXELS

ENV_PREFIX = "FAKELENS_"
MB = 1024 * 1024
DECODE_PLACES = ("auto", "front", "model")


@dataclass(frozen=True)
class ServeSettings:
    model: str = "default"  # model/run/export folder, store tag, or "default" (the shipped detector)
    backend: str = "auto"
    device: str = "auto"
    batching: bool = True  # False: each request runs alone (benchmark baseline)
    max_batch_size: int = 32  # images per model call
    max_latency_ms: int = 10_000
    max_inflight: int = 64  # per front worker; beyond it: 503 + Retry-After
    timeout_s: int = 60
    workers: int = 1  # front (decode/preprocess) workers; the model runs in one process
    # Where JPEGs are decoded: "front" (Pillow, in the front workers), "model" (raw bytes to the
    # model process, decoded there by torchvision: nvJPEG on a GPU; models/runtime/jpeg_decode.py), or
    # "auto": "model" when the model runs on CUDA, else "front".
    decode: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = 20 * MB  # per uploaded image
    max_request_bytes: int = 64 * MB  # whole /detect_batch body
    max_batch_items: int = 32  # images per /detect_batch request
    max_inflight_bytes: int = 256 * MB  # upload bytes held per front worker; beyond it: 503
    body_timeout_s: int = 30  # the whole body must arrive within this, else 408
    header_timeout_s: int = 10  # the request headers must arrive within this, else 408 (service/http_limits.py)
    api_keys: tuple[str, ...] = ()
    # /detect_video (models/evidence/video.py): upload bytes, clip duration, sampled frames per request.
    # A video also has to fit max_inflight_bytes (the worker's upload budget), else it gets a 503.
    max_video_bytes: int = 200 * MB
    max_video_seconds: int = 600
    max_video_frames: int = 64

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_latency_ms", "max_inflight", "timeout_s", "workers",
                     "max_pixels", "max_bytes", "max_request_bytes", "max_batch_items", "max_inflight_bytes",
                     "body_timeout_s", "header_timeout_s", "max_video_bytes", "max_video_seconds", "max_video_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{ENV_PREFIX}{name.upper()}={getattr(self, name)} must be >= 1")
        if self.decode not in DECODE_PLACES:
            raise ValueError(f"{ENV_PREFIX}DECODE={self.decode!r}: use one of {', '.join(DECODE_PLACES)}")
        if self.body_timeout_s >= self.timeout_s:
            raise ValueError(
                f"{ENV_PREFIX}BODY_TIMEOUT_S={self.body_timeout_s} must be below {ENV_PREFIX}TIMEOUT_S="
                f"{self.timeout_s}: the body has to arrive before the whole request times out"
            )
        if self.max_inflight_bytes < self.max_request_bytes:
            raise ValueError(
                f"{ENV_PREFIX}MAX_INFLIGHT_BYTES={self.max_inflight_bytes} is below {ENV_PREFIX}MAX_REQUEST_BYTES="
                f"{self.max_request_bytes}: no full-size request could ever be admitted"
            )
        if self.batching and self.max_batch_size < 2:
            raise ValueError(
                f"{ENV_PREFIX}MAX_BATCH_SIZE={self.max_batch_size}: adaptive batching needs >= 2; "
                f"set {ENV_PREFIX}BATCHING=0 to serve each request alone"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeSettings:
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, raw, type(getattr(cls(), f.name)))
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that makes `from_env` rebuild these settings in a child process."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "1" if value else "0"
            out[ENV_PREFIX + f.name.upper()] = str(value)
        return out


def _parse(name: str, raw: str, kind: type) -> object:
    key = ENV_PREFIX + name.upper()
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}={raw!r}: use 1/0, true/false")
    if kind is int:
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            raise ValueError(f"{key}={raw!r} is not an integer") from None
    if kind is tuple:
        return tuple(k.strip() for k in raw.split(",") if k.strip())
    return raw
