"""`fakelens score --engine ray`: the same scoring job scaled out on Ray Data (the `distributed` extra).

    fakelens score s3://bucket/images/ -o scores.parquet --model /models/exp --engine ray \
        --ray-address ray://head:10001 --workers 8

The discovered paths become a dataset (`ray.data.from_items`); an actor pool
(`ScoreActor`: the model is loaded once per actor in `__init__`, batches are decoded and
scored in `__call__` under `torch.inference_mode()`, one GPU per actor when the cluster
has GPUs) maps it to rows, which `write_parquet` writes as part files to
`OUT.ray-parts/`. The driver then merges them, in input order, into the single OUT file
(JSONL, CSV or Parquet by extension, written atomically) and removes the folder.
The part folder sits beside OUT, so OUT must be on storage every Ray worker can write
(local disk for a local instance, a shared mount on a cluster). A Ray job is not
resumable: it either produces the whole OUT or leaves no OUT (rerun it after a failure).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.runtime.prepare import Limits
from service.score import (
    Evidence,
    ScoreOptions,
    Summary,
    already_complete,
    job_header,
    output_errors,
    read_and_prepare,
    score_prepared,
)
from service.writers import COLUMNS, arrow_schema, as_text, output_format, state_dir, write_table

INDEX = "_index"


class ScoreActor:
    """One Ray actor: a detector loaded once, scoring batches of paths."""

    def __init__(self, model: str, backend: str, device: str, max_pixels: int, evidence: Evidence = Evidence(),
                 aggregate: str = "mean"):
        from models.runtime.loader import load_detector

        self.detector = load_detector(model, backend, device)
        self.limits = Limits(max_pixels=max_pixels)
        self.evidence, self.aggregate = evidence, aggregate  # face mode and video sampling (heatmaps: local only)

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa
        import torch

        cfg = self.detector.config
        with torch.inference_mode():
            rows = score_prepared(
                self.detector, [read_and_prepare(str(p), cfg, self.limits, self.evidence) for p in batch["path"]],
                self.aggregate,
            )
        table = pa.Table.from_pylist([as_text(r) for r in rows], schema=arrow_schema())
        return table.append_column(INDEX, pa.array(np.asarray(batch[INDEX], dtype=np.int64)))


def connect(address: str | None) -> bool:
    """Join the cluster at `address` (or $RAY_ADDRESS), else start a local instance; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)
    return True


def _actor_plan(opts: ScoreOptions) -> tuple[int, float]:
    """(actor count, GPUs per actor): one GPU per actor when the cluster has any and device allows."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus and opts.device != "cpu":
        return opts.workers or gpus, 1.0
    return opts.workers or max(1, int(resources.get("CPU", 1)) // 2), 0.0


def _merge(parts: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(parts.rglob("*.parquet")) if parts.exists() else []
    if not files:
        return arrow_schema().empty_table()
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return table.sort_by(INDEX).drop_columns([INDEX])


def _counts(table) -> tuple[int, int, int]:
    """(scored, flagged synthetic, errors) over all rows, before any --only-synthetic filter."""
    import pyarrow.compute as pc

    errors = len(table) - table["error"].null_count
    flagged = int(pc.sum(pc.equal(table["label"], "synthetic")).as_py() or 0)
    return len(table) - errors, flagged, errors


def score_files_ray(
    inputs: Sequence[str], out: str | Path, opts: ScoreOptions, address: str | None = None
) -> Summary:
    """Score `inputs` into OUT on Ray Data (a local instance unless an address is given)."""
    if opts.heatmaps is not None:
        raise ValueError("--heatmaps writes PNGs beside the job and runs with the local engine only; drop --engine ray")
    import pyarrow.compute as pc
    import ray

    start = time.perf_counter()
    out = Path(out)
    output_format(out)
    if out.exists() and not state_dir(out).exists() and not opts.overwrite:
        from models.runtime.detector import locate

        cfg = locate(opts.model)[1]
        done = already_complete(out, job_header(cfg, inputs, out, opts.only_synthetic), inputs, opts)
        if done is not None:
            return done
    if (out.exists() or state_dir(out).exists()) and not opts.overwrite:
        raise ValueError(
            f"{out} already exists (or holds an interrupted local job); pass --overwrite or choose another -o"
        )
    parts = out.with_name(out.name + ".ray-parts")
    shutil.rmtree(parts, ignore_errors=True)
    with output_errors(out):  # an unwritable -o fails here, in one line, before any picture is scored
        parts.mkdir(parents=True)
    started = connect(address)
    try:
        actors, gpus = _actor_plan(opts)
        ds = ray.data.from_items([{INDEX: i, "path": p} for i, p in enumerate(inputs)])
        ds = ds.map_batches(
            ScoreActor,
            fn_constructor_kwargs=dict(
                model=opts.model, backend=opts.backend, device=opts.device, max_pixels=opts.max_pixels,
                evidence=Evidence.of(opts, "cuda" if gpus else "cpu"), aggregate=opts.aggregate,
            ),
            batch_size=opts.batch_size,
            batch_format="numpy",
            concurrency=actors,
            num_gpus=gpus,
        )
        ds.write_parquet(str(parts))
        table = _merge(parts)
    finally:
        if started:
            ray.shutdown()
    if table.num_rows != len(inputs):
        raise RuntimeError(
            f"Ray returned {table.num_rows} rows for {len(inputs)} inputs; {parts} kept for inspection"
        )
    scored, flagged, errors = _counts(table)
    if opts.only_synthetic:
        table = table.filter(pc.equal(table["label"], "synthetic"))
    if opts.overwrite:
        shutil.rmtree(state_dir(out), ignore_errors=True)
    with output_errors(out):
        write_table(table.select(list(COLUMNS)), out)
    shutil.rmtree(parts, ignore_errors=True)
    return Summary(len(inputs), scored, flagged, errors, 0, time.perf_counter() - start)
