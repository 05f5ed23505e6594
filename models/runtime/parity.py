"""Parity between the eager model and its exported runtimes, with documented bounds.

Every export runs each produced runtime on a fixed deterministic batch and compares its
logits with the eager PyTorch model's. Bounds (max abs difference), per runtime in
models.runtime.backends.SPECS:
- fp32 runtimes (TorchScript, ONNX Runtime, OpenVINO f32): logits within
  1e-4 * max(1, max |eager logit|): the same maths in another kernel order.
- reduced precision (ONNX int8 dynamic quantization, ONNX fp16, OpenVINO bf16): the
  calibrated probability within `BackendSpec.prob_bound`; int8/bf16 change the arithmetic,
  so the honest check of those is the AUC change on validation data recorded by the export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from models.core.attribution import softmax
from models.core.preprocess import calibrated_probability
from models.runtime.backends import SPECS

FP32_LOGIT_RTOL = 1e-4
# Batch sizes for the check: 1 and an odd size unlike the trace's, proving the batch axis is dynamic.
PARITY_BATCHES = (1, 3)


class ParityError(ValueError):
    """An exported runtime disagrees with the eager model beyond its bound."""


@dataclass(frozen=True)
class ParityResult:
    backend: str
    max_abs_logit_diff: float
    max_abs_prob_diff: float
    bound: float
    bound_on: str  # "logit" or "prob"
    passed: bool
    error: str = ""  # why the runtime could not run at all

    def line(self) -> str:
        mark = "ok  " if self.passed else "FAIL"
        if self.error:
            return f"{mark} {self.backend:<14} could not run: {self.error}"
        return (f"{mark} {self.backend:<14} max|dlogit|={self.max_abs_logit_diff:.2e} "
                f"max|dprob|={self.max_abs_prob_diff:.2e} (bound {self.bound:.1e} on {self.bound_on})")

    def to_dict(self) -> dict:
        return asdict(self)


def parity_batches(img_size: int, seed: int = 0) -> list[torch.Tensor]:
    """Fixed pseudo-random normalised inputs (same on every machine for a given seed)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, img_size, img_size, generator=gen) for n in PARITY_BATCHES]


def run_all(fn: Callable[[torch.Tensor], np.ndarray], batches: list[torch.Tensor]) -> np.ndarray:
    """Every output column of every batch: N x C (the verdict logit, then any family logits)."""
    return np.concatenate([np.asarray(fn(b), dtype=np.float64).reshape(len(b), -1) for b in batches])


def probabilities(outputs: np.ndarray, temperature: float, family_temperature: float) -> np.ndarray:
    """What the answers are made of: the calibrated verdict probability, then the family softmax."""
    p = calibrated_probability(outputs[:, :1], temperature)
    if outputs.shape[1] == 1:
        return p
    return np.concatenate([p, softmax(outputs[:, 1:], family_temperature)], axis=1)


def compare(name: str, reference: np.ndarray, candidate: np.ndarray, temperature: float,
            family_temperature: float = 1.0) -> ParityResult:
    """Every column's logit, and every probability an answer reports (verdict and families), held
    to the runtime's bound."""
    if candidate.shape != reference.shape:
        return ParityResult(name, float("inf"), float("inf"), 0.0, "shape", False)
    dlogit = float(np.max(np.abs(candidate - reference))) if candidate.size else 0.0
    dprob = float(np.max(np.abs(probabilities(candidate, temperature, family_temperature)
                                - probabilities(reference, temperature, family_temperature))))
    if not np.all(np.isfinite(candidate)):
        dlogit = dprob = float("inf")
    spec_bound = SPECS[name].prob_bound if name in SPECS else None
    if spec_bound is not None:
        bound, on, value = spec_bound, "prob", dprob
    else:
        bound = FP32_LOGIT_RTOL * max(1.0, float(np.max(np.abs(reference))))
        on, value = "logit", dlogit
    return ParityResult(name, dlogit, dprob, bound, on, bool(value <= bound))


def prob_bound(name: str) -> float:
    """The probability tolerance a backend is held to (fp32 ones: 1e-4)."""
    bound = SPECS[name].prob_bound
    return FP32_LOGIT_RTOL if bound is None else bound


def raise_on_failure(results: list[ParityResult], where: str) -> None:
    failed = [r for r in results if not r.passed]
    if failed:
        raise ParityError(
            f"export rejected: {', '.join(r.backend for r in failed)} disagree with the eager model "
            f"({'; '.join(r.line() for r in failed)}); nothing was written to {where}. "
            "Drop the failing variant (--int8/--fp16) or report the exporter bug with this message."
        )
