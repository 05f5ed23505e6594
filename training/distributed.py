"""Multi-process training under torchrun: process group, rank queries and the few collectives.

    torchrun --nproc_per_node 2 -m training --data DATA --out RUN ...
    torchrun --nnodes 2 --node_rank 0 --rdzv_backend c10d --rdzv_endpoint HOST:29400 \
        --nproc_per_node 8 -m training ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (plus the rendezvous address); `init()` reads
them, starts the process group (NCCL on GPU, gloo on CPU) and pins each rank to its
LOCAL_RANK GPU. Without torchrun (WORLD_SIZE unset or 1) nothing is started and every
helper here degrades to its single-process meaning, so train.py has one code path.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def from_env() -> DistInfo:
    """The rank layout torchrun describes in the environment (1 process when it is absent)."""
    return DistInfo(rank=_env_int("RANK", 0), world_size=_env_int("WORLD_SIZE", 1),
                    local_rank=_env_int("LOCAL_RANK", 0))


def init(device: str) -> DistInfo:
    """Join the process group torchrun set up; returns this process's place in it."""
    info = from_env()
    if not info.enabled or dist.is_initialized():
        return info
    if device == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                             "use --nproc_per_node <= the number of GPUs")
        # After this, plain "cuda" means this rank's own GPU everywhere in train.py.
        torch.cuda.set_device(info.local_rank)
    backend = "nccl" if device == "cuda" else "gloo"
    # Validation and calibration run on rank 0 while the others wait at a barrier; the
    # default 30-minute timeout is plenty for them, but a large val split should not kill the run.
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=2))
    return info


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> DistInfo:
    if not dist.is_initialized():
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return current().is_main


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def sum_across(values: list[float], device: str) -> list[float]:
    """Element-wise sum of a few numbers over all ranks (float64, so image counts stay exact)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (e.g. the validation metrics only rank 0 computed)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_dicts(d: dict) -> dict:
    """The union of every rank's dict (e.g. the unreadable files each rank met)."""
    if not dist.is_initialized():
        return dict(d)
    parts: list[dict] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, d)
    merged: dict = {}
    for part in parts:
        merged.update(part)
    return merged
