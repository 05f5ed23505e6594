"""The HTTP detection service: `bentoml serve service.service:Detector` (or `fakelens serve`).

Two BentoML services in one bento:
- `Detector` (public, CPU): POST /detect and /detect_batch take multipart uploads, decode
  them and cut the model's views (off the event loop, in threads), then await the model.
  /detect answers with the file's provenance and, with `faces=true`, per-face scores;
  /explain adds an occlusion heatmap, /detect_video scores sampled frames (service/evidence.py).
- `DetectorModel` (internal, GPU when present): loads the model once through
  `models.runtime.loader.load_detector`, warms it up, and exposes one adaptive-batching method,
  `score(views: list[array]) -> list[score row]` (the calibrated probability synthetic, then the
  family logits when the model has a family head). BentoML merges concurrent calls into
  one model call; the batch sizes run land in the `fakelens_model_batch_size` histogram.
  Views cross the process hop as uint8 pixels (0.15 MB per 224 view, not 0.6 MB as
  float32) and are normalised in the model process, on its device (models/core/preprocess.py).
  With FAKELENS_DECODE=model (the default when the model is on CUDA) a JPEG crosses as its
  file bytes instead and `score_jpeg` decodes the batch there (nvJPEG; models/runtime/jpeg_decode.py).
- The upload is parsed once, by the guard (service/upload.py); BentoML sees one empty
  placeholder per file field and the endpoints read the guard's files (`uploads`).

Settings come from FAKELENS_* environment variables read at import (service/settings.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import aiohttp
import anyio
import bentoml
import numpy as np
import torch
from pydantic import Field, Strict

from models.core.config import DetectorConfig
from models.evidence.explain import MAX_GRID
from models.evidence.provenance import env_trust_anchors
from models.evidence.video import AGGREGATES, Sampling, VideoLimits
from models.runtime.detector import Detector as LoadedDetector
from models.runtime.jpeg_decode import undecodable
from models.runtime.loader import load_detector
from service import evidence, monitoring
from service.batching import install as install_batching
from service.errors import Overloaded, ServiceError, error_response, from_image_error
from service.guard import GuardMiddleware, QuietDisconnect
from service.http_limits import install as install_http_limits
from service.metrics_labels import bound_endpoint_labels
from service.page import page_app, page_paths
from service.routes import OPEN_PATHS, SYSTEM_PATHS, api_routes
from service.settings import ServeSettings
from service.upload import kept_count, kept_upload
from service.verdict import Limits, Prepared, item_error, prepare_upload, verdict

SETTINGS = ServeSettings.from_env()
install_http_limits(SETTINGS.header_timeout_s)  # header deadline and JSON 431 below the app (before uvicorn loads)
install_batching()  # the batching window comes back down after a burst (service/batching.py)

# Form options of the evidence endpoints. BentoML JSON-decodes each text part, so `faces=true`
# arrives as a bool; Strict refuses what the schema does not allow (faces=0, grid="7") with a
# 400 instead of coercing it, and the bounds appear in /docs.json.
Flag = Annotated[bool, Strict()]
Grid = Annotated[int, Strict(), Field(ge=1, le=MAX_GRID)]
Frames = Annotated[int, Strict(), Field(ge=1)]
PerSecond = Annotated[float, Strict(), Field(ge=0)]  # 0: sample `frames` uniformly instead
Aggregate = Literal[AGGREGATES]
LIMITS = Limits(max_bytes=SETTINGS.max_bytes, max_pixels=SETTINGS.max_pixels)
LINK_RETRIES = 3
NOT_DECODED = -1.0  # score_jpeg's answer for a file the model process could not decode
GPU = torch.cuda.is_available() and SETTINGS.device != "cpu"

BATCH_SIZE = bentoml.metrics.Histogram(
    name="fakelens_model_batch_size",
    documentation="Images per model call actually run by the batched score method",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
DEVICE_DECODED = bentoml.metrics.Counter(
    name="fakelens_model_device_decoded_images",
    documentation="JPEGs sent as bytes and decoded in the model process (FAKELENS_DECODE=model)",
)
BATCH_SECONDS = bentoml.metrics.Histogram(
    name="fakelens_model_batch_seconds",
    documentation="Wall time of one batched model call",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


async def _nothing() -> list:
    return []


async def gather_items(calls) -> list:
    """Each call's result, or its ServiceError (a bad item gets its own error); other errors raise."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for o in outcomes:
        if isinstance(o, BaseException) and not isinstance(o, ServiceError):
            raise o
    return outcomes


@dataclass(frozen=True)
class Upload:
    """One uploaded file as the guard parsed it (service/upload.py: BentoML's own `Path` argument is
    an empty placeholder). `read()` blocks: call it in a worker thread."""

    scope: dict
    field: str
    index: int

    def read(self) -> bytes:
        return kept_upload(self.scope, self.field, self.index)


def uploads(field: str) -> list[Upload]:
    """The files of `field` in the request being handled (a context variable of BentoML's).
    (Not a `ctx: bentoml.Context` parameter: with one, BentoML overwrites the status of every
    Response an endpoint returns, our 4xx errors included, with 200.)"""
    scope = Detector.context.request.scope
    return [Upload(scope, field, i) for i in range(kept_count(scope, field))]


def read_and_prepare(upload: Upload, cfg: DetectorConfig, raw_jpeg: bool) -> Prepared:
    return prepare_upload(upload.read(), cfg, LIMITS, raw_jpeg)


def decodes_in_model(device: str) -> bool:
    """FAKELENS_DECODE: JPEG bytes go to the model process (auto: where the model runs on CUDA)."""
    return SETTINGS.decode == "model" or (SETTINGS.decode == "auto" and device == "cuda")


def warm_up(detector: LoadedDetector, batch_size: int) -> None:
    """Run the model at batch 1 and at a full batch so the first requests pay no lazy init (the
    JPEG decoder too, where JPEGs are decoded here: nvJPEG's first call sets up its state)."""
    import io

    from PIL import Image

    size = detector.config.preprocess.img_size
    blank = Image.new("RGB", (size, size), (127, 127, 127))
    for n in (1, min(batch_size, 8)):
        detector.probabilities([blank] * n)
    if decodes_in_model(detector.info["device"]):
        jpeg = io.BytesIO()
        blank.save(jpeg, format="JPEG")
        detector.probabilities_from_jpegs([jpeg.getvalue()])


@bentoml.service(
    name="fakelens-model",
    workers=1,
    resources={"gpu": 1} if GPU else {"cpu": "1"},
    traffic={"timeout": SETTINGS.timeout_s},
)
class DetectorModel:
    def __init__(self) -> None:
        self.detector = load_detector(SETTINGS.model, SETTINGS.backend, SETTINGS.device)
        warm_up(self.detector, SETTINGS.max_batch_size)
        self.ready = True

    def __is_ready__(self) -> bool:
        return getattr(self, "ready", False)

    @bentoml.api(
        batchable=SETTINGS.batching,
        max_batch_size=max(2, SETTINGS.max_batch_size),
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def score(self, views: list[np.ndarray]) -> list[list[float]]:
        """Each item is one image's views as V x S x S x 3 pixels; returns its score row (calibrated
        probability synthetic, then the family logits)."""
        BATCH_SIZE.observe(len(views))
        with BATCH_SECONDS.time():
            return self.detector.scores_from_views(views).tolist()

    @bentoml.api(
        batchable=SETTINGS.batching,
        max_batch_size=max(2, SETTINGS.max_batch_size),
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def score_jpeg(self, jpegs: list[bytes]) -> list[list[float]]:
        """Each item is one JPEG file, decoded here, on the model's device; returns its score row. A row
        of -1: it did not decode (not NaN, which a JSON hop would turn into null)."""
        BATCH_SIZE.observe(len(jpegs))
        DEVICE_DECODED.inc(len(jpegs))
        with BATCH_SECONDS.time():
            return np.nan_to_num(self.detector.scores_from_jpegs(jpegs), nan=NOT_DECODED).tolist()

    @bentoml.api
    def view_logits(self, views: np.ndarray) -> list[float]:
        """Raw logits of N x 3 x S x S views, one per view (the /explain occlusion batches)."""
        return self.detector.view_logits(torch.from_numpy(np.ascontiguousarray(views, dtype=np.float32))).tolist()

    @bentoml.api
    def view_outputs(self, views: np.ndarray) -> list[list[float]]:
        """Raw outputs of N x 3 x S x S views, one row per view: the verdict logit, then the family
        logits (/explain's unoccluded views: their family)."""
        return self.detector.view_outputs(torch.from_numpy(np.ascontiguousarray(views, dtype=np.float32))).tolist()

    @bentoml.api
    def describe(self) -> dict:
        return {"config": self.detector.config.to_dict(), "info": self.detector.info}


@bentoml.service(
    name="fakelens",
    workers=SETTINGS.workers,
    # The guard answers its own 504 at timeout_s, in the service's format; BentoML's
    # timeout (another body shape) is only the backstop.
    traffic={"timeout": SETTINGS.timeout_s + 5},
)
class Detector:
    model = bentoml.depends(DetectorModel)

    def __init__(self) -> None:
        env_trust_anchors()  # a bad FAKELENS_C2PA_TRUST_ANCHORS stops the start, rather than failing every request
        self.config: DetectorConfig | None = None
        self.model_info: dict = {}
        self.raw_jpeg = False  # send JPEG bytes to the model process instead of views (FAKELENS_DECODE)
        self._lock = asyncio.Lock()

    async def __is_ready__(self) -> bool:
        try:
            await self.described()
        except Exception:
            return False
        return True

    async def described(self) -> DetectorConfig:
        """The model's config (preprocess, threshold, name), fetched once from DetectorModel."""
        if self.config is None:
            async with self._lock:
                if self.config is None:
                    desc = await self.model.to_async.describe()
                    info = desc["info"]
                    self.model_info = {k: info[k] for k in ("name", "version", "backend", "device")}
                    self.raw_jpeg = decodes_in_model(info["device"])
                    self.config = DetectorConfig.from_dict(desc["config"])
        return self.config

    async def prepared(self, upload: Upload) -> Prepared:
        cfg = await self.described()
        # one worker-thread hop per upload: read the spooled file and cut its views in the same call
        return await anyio.to_thread.run_sync(read_and_prepare, upload, cfg, self.raw_jpeg)

    async def scores(self, items: list[Prepared]) -> list[list[float] | ServiceError]:
        """Each item's score row: views to `score`, JPEG bytes to `score_jpeg` (a ServiceError
        for a JPEG the model process could not decode)."""
        raw = [i for i, p in enumerate(items) if p.jpeg is not None]
        cut = [i for i, p in enumerate(items) if p.jpeg is None]
        parts = await asyncio.gather(
            self.call_model(self.model.to_async.score, [items[i].views for i in cut]) if cut else _nothing(),
            self.call_model(self.model.to_async.score_jpeg, [items[i].jpeg for i in raw]) if raw else _nothing(),
        )
        out: list[list[float] | ServiceError] = [[0.0]] * len(items)
        for index, row in zip(cut + raw, [*parts[0], *parts[1]], strict=True):
            out[index] = from_image_error(undecodable()) if row[0] == NOT_DECODED else row
        return out

    async def call_model(self, method, payload):
        """One call to a DetectorModel method, with link retries and overload mapped to 503."""
        for attempt in range(LINK_RETRIES + 1):
            try:
                return await method(payload)
            except (aiohttp.ClientConnectionError, RuntimeError) as e:
                # A burst of new connections to the model's unix socket sometimes meets a
                # closing transport, before the answer or while reading it (aiohttp then raises a
                # bare RuntimeError "Connection closed.", seen once in ~3,900 soak requests at
                # load 8); scoring is idempotent, so retry instead of a 500.
                if isinstance(e, RuntimeError) and "Connection closed" not in str(e):
                    raise
                if attempt == LINK_RETRIES:
                    raise Overloaded("the model process did not accept the request; retry shortly") from None
                await asyncio.sleep(0.05 * (attempt + 1))
            except bentoml.exceptions.BentoMLException as e:
                if int(e.error_code) in (429, 503, 504):
                    raise Overloaded("the model is overloaded; retry after the Retry-After seconds") from None
                raise
        raise AssertionError("unreachable")

    @bentoml.api(route="/detect")
    async def detect(self, image: Path, faces: Flag = False) -> dict:
        """Score one image (multipart field `image`): label, calibrated score, threshold, facts, provenance.

        faces=true scores each detected face crop; the score is the max over faces."""
        [upload] = uploads("image")
        if faces:
            return await self.detect_faces(upload)
        start = time.perf_counter()
        try:
            item = await self.prepared(upload)
            [score] = await self.scores([item])
            if isinstance(score, ServiceError):
                raise score
        except ServiceError as err:
            return error_response(err)
        out = verdict(score, item.facts, self.config, self.model_info, item.provenance)
        monitoring.record(out)
        out["elapsed_ms"] = round((time.perf_counter() - start) * 1000, 3)
        return out

    @bentoml.api(route="/detect_batch")
    async def detect_batch(self, images: list[Path], faces: Flag = False) -> dict:
        """Score several images (repeated multipart field `images`); a bad item gets its own error.

        faces=true scores each image in face mode, as /detect does (max over its face crops)."""
        start = time.perf_counter()
        try:
            files = uploads("images")
            results = await (self.batch_faces(files) if faces else self.batch_plain(files))
        except ServiceError as err:
            return error_response(err)
        return {"results": results, "elapsed_ms": round((time.perf_counter() - start) * 1000, 3)}

    async def batch_plain(self, images: list[Upload]) -> list[dict]:
        outcomes = await gather_items(self.prepared(p) for p in images)
        scores = iter(await self.scores([o for o in outcomes if isinstance(o, Prepared)]))
        results = []
        for o in outcomes:
            score = o if isinstance(o, ServiceError) else next(scores)
            results.append(item_error(score) if isinstance(score, ServiceError)
                           else verdict(score, o.facts, self.config, self.model_info, o.provenance))
        for answer in results:
            monitoring.record(answer)  # error items carry no score and are skipped
        return results

    async def batch_faces(self, images: list[Upload]) -> list[dict]:
        outcomes = await gather_items(self.upload(p, evidence.plan_face_mode, LIMITS) for p in images)
        planned = [o[1] for o in outcomes if not isinstance(o, ServiceError)]
        # every face crop of every image in one stream of batched model calls
        rows = iter(await self.score_views([v for item in planned for v in item.plan.views]))
        results = []
        for o in outcomes:
            if isinstance(o, ServiceError):
                results.append(item_error(o))
                continue
            cfg, item = o
            scores = [next(rows) for _ in item.plan.views]
            results.append(evidence.answer_face_mode(item, scores, cfg, self.model_info))
        return results

    # ---- evidence: face mode, heatmaps, video (logic in models/, glue in service/evidence.py) ----

    async def score_views(self, views: list[np.ndarray]) -> list[list[float]]:
        """Score rows of many view arrays, sent in chunks the model's batcher accepts."""
        size = SETTINGS.max_batch_size
        chunks = [views[i : i + size] for i in range(0, len(views), size)]
        parts = await asyncio.gather(*(self.scores([Prepared(views=v, facts=None) for v in c]) for c in chunks))
        return [p for part in parts for p in part]

    async def upload(self, upload: Upload, plan, *args):
        cfg = await self.described()
        return cfg, await anyio.to_thread.run_sync(lambda: plan(upload.read(), cfg, *args))

    async def detect_faces(self, image: Upload) -> dict:
        start = time.perf_counter()
        try:
            cfg, item = await self.upload(image, evidence.plan_face_mode, LIMITS)
            rows = await self.score_views(item.plan.views)
        except ServiceError as err:
            return error_response(err)
        out = evidence.answer_face_mode(item, rows, cfg, self.model_info)
        out["elapsed_ms"] = round((time.perf_counter() - start) * 1000, 3)
        return out

    @bentoml.api(route="/explain")
    async def explain(self, image: Path, grid: Grid = 7, overlay: Flag = True) -> dict:
        """Where the evidence is: per-cell occlusion relevance (`heatmap`) and a base64 overlay PNG."""
        start = time.perf_counter()
        try:
            [upload] = uploads("image")
            cfg, item = await self.upload(upload, evidence.plan_explain, LIMITS, grid)
            size = SETTINGS.max_batch_size
            # the unoccluded views with all their outputs (verdict and family), the occluded ones' logits
            base, *parts = await asyncio.gather(
                self.call_model(self.model.to_async.view_outputs, item.views),
                *(self.call_model(self.model.to_async.view_logits, item.occluded[i : i + size])
                  for i in range(0, len(item.occluded), size)))
        except ServiceError as err:
            return error_response(err)
        logits = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])
        out, _ = evidence.answer_explain(item, base, logits, cfg, self.model_info, overlay)
        out["elapsed_ms"] = round((time.perf_counter() - start) * 1000, 3)
        return out

    @bentoml.api(route="/detect_video")
    async def detect_video(self, video: Path, frames: Frames = 16, per_second: PerSecond = 0.0,
                           keyframes: Flag = False, faces: Flag = False, aggregate: Aggregate = "mean") -> dict:
        """Score a video (multipart field `video`): sampled frames (N uniform, or per_second when > 0), aggregate
        (mean or max) for the verdict, share of frames flagged, and the per-frame timeline."""
        start = time.perf_counter()
        try:
            limits = VideoLimits(SETTINGS.max_video_seconds, SETTINGS.max_video_frames, SETTINGS.max_pixels)
            sampling = Sampling(frames=frames, per_second=per_second or None, keyframes=keyframes)
            [upload] = uploads("video")
            cfg, item = await self.upload(upload, evidence.plan_video, sampling, limits, faces)
            rows = await self.score_views(item.views)
        except ServiceError as err:
            return error_response(err)
        out = evidence.answer_video(item, rows, cfg, self.model_info, aggregate, faces)
        out["elapsed_ms"] = round((time.perf_counter() - start) * 1000, 3)
        return out


DetectorModel.add_asgi_middleware(QuietDisconnect)
ROUTES = api_routes(Detector)
Detector.add_asgi_middleware(GuardMiddleware, settings=SETTINGS, routes=ROUTES)
# The analyst's page at `/` (service/page.py); BentoML matches it only on the page's own routes.
Detector.mount_asgi_app(page_app(Detector, SETTINGS), path="/")
# Both services' own routes and the page's files keep their labels (this module is imported
# by the model's worker too); any other path is counted as "/other".
bound_endpoint_labels({*ROUTES, *OPEN_PATHS, *SYSTEM_PATHS, *page_paths(),
                       *(api.route for api in DetectorModel.apis.values())})
