"""Runtimes for detectors, and one `BackendSpec` per runtime that everyone else reads.

A backend maps an N x 3 x S x S float32 batch to an N x C array of raw outputs (C = 1: the
verdict logit; a detector with a family head adds one logit per family after it): eager PyTorch (checkpoint
folders), ONNX Runtime (fp32/int8/fp16), TorchScript and OpenVINO (export folders).
`SPECS` at the bottom is the single table of what each one is: the artifact it loads, the
export option that writes it, its precision and parity bound, the devices it runs on and
its rank for `backend="auto"`. Export (models/runtime/export.py), parity (models/runtime/parity.py),
auto-selection and loading (models/runtime/detector.py) all read it, so adding a runtime is one
factory plus one row here.

Factories fail at load, with a message saying what to do, when the artifact is missing,
corrupt or built for another input size; `detector.open_detector` then runs a warm-up batch
so nothing fails at the first request. Heavy imports (onnxruntime, openvino) stay inside
the factories so importing the table is cheap.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.core.config import DetectorConfig
from models.runtime.metadata import (
    INPUT_NAME,
    INT8_OPENVINO_FILE,
    INT8_STATIC_FILE,
    ONNX_FILE,
    ONNX_FP16_FILE,
    ONNX_INT8_FILE,
    OUTPUT_NAME,
    TORCHSCRIPT_FILE,
)

WEIGHTS_FILE = "model.safetensors"  # models.core.checkpoint.WEIGHTS, without importing timm here


def _artifact(folder: Path, filename: str, hint: str) -> Path:
    path = Path(folder) / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} holds no {filename}; {hint} (a checkpoint folder must first go through "
            f"`fakelens export {folder} --out EXP`)"
        )
    return path


def _check_spatial(shape: list, cfg: DetectorConfig, path: Path) -> None:
    """Refuse an artifact whose fixed input size disagrees with detector.json's img_size."""
    size = cfg.preprocess.img_size
    spatial = [d for d in shape[2:] if isinstance(d, int)]
    if len(shape) != 4 or any(d != size for d in spatial):
        raise ValueError(
            f"{path} expects input {shape} but detector.json says img_size={size} (N x 3 x {size} x {size}); "
            "the model file and detector.json come from different exports: re-run `fakelens export`"
        )


class ModuleBackend:
    """A live PyTorch module (training's validation passes use this on the model in memory)."""

    name = "eager"

    def __init__(self, model: torch.nn.Module, device: str = "cpu"):
        self.model = model
        self.device = device
        self.input_device = device  # pixel views are normalised on the GPU, after a uint8 copy

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model(batch.to(self.device, non_blocking=True))
        finally:
            self.model.train(was_training)
        return out.float().reshape(len(batch), -1).cpu().numpy()


def eager_backend(folder: Path, cfg: DetectorConfig, device: str) -> ModuleBackend:
    """The PyTorch model from a checkpoint folder (model.safetensors + detector.json)."""
    from models.core.checkpoint import load_model_dir

    if not (Path(folder) / WEIGHTS_FILE).is_file() and (Path(folder) / ONNX_FILE).is_file():
        raise ValueError(
            f"{folder} is an export folder: it holds no PyTorch weights for backend 'eager'; "
            f"use backend 'onnx', 'openvino' or 'torchscript', or point at the training run folder"
        )
    model, _ = load_model_dir(folder)
    return ModuleBackend(model.to(device), device)


class OrtBackend:
    """ONNX Runtime session; CUDAExecutionProvider when device is cuda."""

    def __init__(self, path: Path, cfg: DetectorConfig, device: str, name: str):
        import onnxruntime as ort

        self.name, self.device = name, device
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError(
                    f"backend {name!r} on cuda needs onnxruntime-gpu (available providers: "
                    f"{ort.get_available_providers()}); install it or use backend 'torchscript'"
                )
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT threads otherwise spin for a while after each run, stealing the cores that
        # image decoding (and any other runtime in the process) needs between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # ORT raises several pybind types (InvalidProtobuf, Fail, ...)
            raise ValueError(
                f"{path} cannot be loaded by ONNX Runtime ({type(e).__name__}: {str(e)[:300]}); "
                "the file is corrupt or truncated: re-run `fakelens export`"
            ) from None
        _check_spatial(list(self.session.get_inputs()[0].shape), cfg, path)

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].reshape(len(x), -1)


def _spec_artifact(folder: Path, name: str) -> Path:
    spec = SPECS[name]
    return _artifact(folder, spec.artifact, spec.how_to_get)


def onnx_backend(folder: Path, cfg: DetectorConfig, device: str) -> OrtBackend:
    return OrtBackend(_spec_artifact(folder, "onnx"), cfg, device, "onnx")


def onnx_int8_backend(folder: Path, cfg: DetectorConfig, device: str) -> OrtBackend:
    return OrtBackend(_spec_artifact(folder, "onnx-int8"), cfg, device, "onnx-int8")


def onnx_fp16_backend(folder: Path, cfg: DetectorConfig, device: str) -> OrtBackend:
    return OrtBackend(_spec_artifact(folder, "onnx-fp16"), cfg, device, "onnx-fp16")


class TorchScriptBackend:
    """torch.jit.load of the traced model; fp16 weights and inputs on cuda."""

    def __init__(self, path: Path, cfg: DetectorConfig, device: str):
        self.name, self.device = "torchscript", device
        self.input_device = device  # pixel views are normalised on the GPU, after a uint8 copy
        try:
            with warnings.catch_warnings():
                # torch 2.9+ marks TorchScript deprecated; it is still the fastest eager-free runtime here.
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location=device)
        except Exception as e:  # torch raises RuntimeError/ValueError for torn zip archives
            raise ValueError(
                f"{path} cannot be loaded by torch.jit.load ({str(e)[:300]}); "
                "the file is corrupt or truncated: re-run `fakelens export`"
            ) from None
        # fp16 on GPU: half the memory traffic; fp32 on CPU where fp16 GEMMs are slow.
        self.dtype = torch.float16 if device == "cuda" else torch.float32
        self.module = module.to(self.dtype).eval()

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        out = self.module(batch.to(self.device, self.dtype, non_blocking=True))
        return out.float().reshape(len(batch), -1).cpu().numpy()


def torchscript_backend(folder: Path, cfg: DetectorConfig, device: str) -> TorchScriptBackend:
    return TorchScriptBackend(_spec_artifact(folder, "torchscript"), cfg, device)


@functools.cache
def openvino_core():
    """The process's one OpenVINO Core, never released.

    Compiling on a CPU with AMX, OpenVINO's CPU plugin gives the calling thread a signal stack
    of its own (sigaltstack, 11.5 KB) and frees it when the plugin goes away with the last Core.
    When that happened on another thread (a Core dropped by the garbage collector there), the
    main thread kept pointing at the freed stack, and the next signal it handled (SIGCHLD of a
    subprocess) killed the process with SIGSEGV from the kernel (si_code SI_KERNEL), with no
    traceback: seen at the end of the full test suite. One Core that lives as long as the
    process keeps that stack valid, and saves re-creating the plugin for every model.
    """
    import openvino as ov

    return ov.Core()


def cpu_has_bf16() -> bool:
    """True where OpenVINO can run bf16 natively (AMX / AVX512-BF16 CPUs)."""
    return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoBackend:
    """OpenVINO CPU plugin reading model.onnx; `precision` is the inference precision hint."""

    def __init__(self, path: Path, cfg: DetectorConfig, device: str, name: str, precision: str):
        if device != "cpu":
            raise ValueError(f"backend {name!r} runs on CPU only; use device='cpu' or backend 'onnx'/'torchscript'")
        self.name, self.device, self.precision = name, device, precision
        core = openvino_core()
        try:
            model = core.read_model(str(path))
        except Exception as e:  # OpenVINO raises RuntimeError subclasses for unreadable files
            raise ValueError(
                f"{path} cannot be read by OpenVINO ({str(e)[:300]}); the file is corrupt or truncated: "
                "re-run `fakelens export`"
            ) from None
        _check_spatial([d.get_length() if d.is_static else "batch" for d in model.inputs[0].get_partial_shape()],
                       cfg, path)
        # LATENCY: one stream using every core per call, which is how callers batch.
        self.compiled = core.compile_model(
            model, "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        )

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        return np.asarray(self.compiled(x)[0]).reshape(len(x), -1)


def openvino_backend(folder: Path, cfg: DetectorConfig, device: str) -> OpenVinoBackend:
    """bf16 on CPUs that have it (AMX: ~4x ORT fp32 on vit_small, see docs/performance-runtimes.md)."""
    path = _spec_artifact(folder, "openvino")
    return OpenVinoBackend(path, cfg, device, "openvino", "bf16" if cpu_has_bf16() else "f32")


def openvino_fp32_backend(folder: Path, cfg: DetectorConfig, device: str) -> OpenVinoBackend:
    path = _spec_artifact(folder, "openvino-fp32")
    return OpenVinoBackend(path, cfg, device, "openvino-fp32", "f32")


def openvino_int8_backend(folder: Path, cfg: DetectorConfig, device: str) -> OpenVinoBackend:
    """OpenVINO reading NNCF's int8 IR (models/runtime/quantize.py): its int8 kernels (VNNI/AMX) run
    the quantised ops, the rest runs at the CPU's usual precision (bf16 where available), as
    backend 'openvino' does."""
    path = _artifact(folder, INT8_OPENVINO_FILE, "run `fakelens quantize EXP --data DATA` (needs nncf)")
    return OpenVinoBackend(path, cfg, device, "openvino-int8", "bf16" if cpu_has_bf16() else "f32")


def onnx_int8_static_backend(folder: Path, cfg: DetectorConfig, device: str) -> OrtBackend:
    path = _artifact(folder, INT8_STATIC_FILE, "run `fakelens quantize EXP --data DATA`")
    return OrtBackend(path, cfg, device, "onnx-int8-static")


def has_cuda_ort(device: str) -> bool:
    import onnxruntime as ort

    return device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()


@dataclass(frozen=True)
class BackendSpec:
    """What one runtime is. Calling the spec loads it: `spec(folder, cfg, device) -> Backend`."""

    name: str
    factory: Callable[[Path, DetectorConfig, str], object]
    artifact: str  # the file it loads from a model or export folder
    precision: str  # fp32 | fp16 | bf16 | int8: the arithmetic it runs (decides its parity bound)
    devices: tuple[str, ...]  # where it can run
    # ExportOptions field that asks `fakelens export` for the artifact; None: written by every
    # export (onnx, torchscript) or not an export file at all (eager's checkpoint weights).
    export_option: str | None = None
    # Parity vs the eager model: None = fp32, logits within parity.FP32_LOGIT_RTOL; reduced
    # precision: calibrated probability within this bound (the honest check of those is the
    # validation AUC change the export records).
    prob_bound: float | None = None
    # True: a parity failure rejects the export. False: parity is only recorded, and `auto`
    # may pick this backend only where it passed (OpenVINO bf16 depends on the CPU it runs on).
    rejects_export: bool = True
    # device -> rank among the candidates for backend="auto" (lower wins); absent: never auto.
    auto_rank: Mapping[str, int] = field(default_factory=dict)
    available: Callable[[str], bool] | None = None  # a run-time condition for `auto` (e.g. a GPU ORT)
    how_to_get: str = "re-run `fakelens export`"  # what produces the artifact, for "file missing" errors

    def __call__(self, folder: Path, cfg: DetectorConfig, device: str):
        return self.factory(folder, cfg, device)

    @property
    def is_export(self) -> bool:
        """Loaded from an export folder (everything but eager's checkpoint)."""
        return self.artifact != WEIGHTS_FILE


def _spec(name, factory, artifact, precision, devices, **kw) -> BackendSpec:
    return BackendSpec(name, factory, artifact, precision, devices, **kw)


_INT8_HOW = "export with `fakelens export ... --data DATA --int8-static` (or `fakelens quantize EXP --data DATA`)"
# Ranks follow docs/performance-runtimes.md: CPU: OpenVINO (bf16 on AMX CPUs) when its parity
# passed, else ORT fp32; GPU: ORT fp16 where onnxruntime-gpu is installed, else TorchScript fp16.
SPECS: dict[str, BackendSpec] = {s.name: s for s in (
    _spec("eager", eager_backend, WEIGHTS_FILE, "fp32", ("cpu", "cuda"), auto_rank={"cpu": 9, "cuda": 9},
          how_to_get="point at the training run or model folder"),
    _spec("torchscript", torchscript_backend, TORCHSCRIPT_FILE, "fp32", ("cpu", "cuda"),
          auto_rank={"cpu": 2, "cuda": 1}),
    _spec("onnx", onnx_backend, ONNX_FILE, "fp32", ("cpu", "cuda"), auto_rank={"cpu": 1}),
    _spec("onnx-int8", onnx_int8_backend, ONNX_INT8_FILE, "int8", ("cpu",), export_option="int8",
          prob_bound=5e-2, how_to_get="export with `fakelens export ... --int8`"),
    _spec("onnx-fp16", onnx_fp16_backend, ONNX_FP16_FILE, "fp16", ("cpu", "cuda"), export_option="fp16",
          prob_bound=1e-2, auto_rank={"cuda": 0}, available=has_cuda_ort,
          how_to_get="export with `fakelens export ... --fp16`"),
    _spec("openvino", openvino_backend, ONNX_FILE, "bf16", ("cpu",), prob_bound=1e-2, rejects_export=False,
          auto_rank={"cpu": 0}),
    _spec("openvino-fp32", openvino_fp32_backend, ONNX_FILE, "fp32", ("cpu",), rejects_export=False),
    # Static int8 (models/runtime/quantize.py): never ranked; `auto` offers one only where the
    # export's int8 gate recorded that it keeps the verdicts and is faster (offered_int8_backend).
    # The gate on validation data is the real check; the parity bound only catches a broken graph.
    _spec("openvino-int8", openvino_int8_backend, INT8_OPENVINO_FILE, "int8", ("cpu",), prob_bound=5e-2,
          rejects_export=False, how_to_get=_INT8_HOW),
    _spec("onnx-int8-static", onnx_int8_static_backend, INT8_STATIC_FILE, "int8", ("cpu",), prob_bound=5e-2,
          rejects_export=False, how_to_get=_INT8_HOW),
)}
