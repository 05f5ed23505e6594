"""Runtimes for exported detectors: ONNX Runtime, TorchScript and OpenVINO.

Each factory has the registry's signature `(folder, cfg, device) -> Backend` and is
registered by name in models/runtime.py (explicitly, see `runtime.BACKENDS`). A backend
maps an N x 3 x S x S float32 batch to N logits. Factories fail at load, with a message
saying what to do, when the artifact is missing, corrupt or built for another input size;
`runtime.load_detector` then runs a warm-up batch so nothing fails at the first request.

Heavy imports (onnxruntime, openvino) stay inside the factories so importing the
registry is cheap.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from models.config import DetectorConfig
from models.metadata import (
    INPUT_NAME,
    ONNX_FILE,
    ONNX_FP16_FILE,
    ONNX_INT8_FILE,
    OUTPUT_NAME,
    TORCHSCRIPT_FILE,
)


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
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].reshape(-1)


def onnx_backend(folder: Path, cfg: DetectorConfig, device: str) -> OrtBackend:
    path = _artifact(folder, ONNX_FILE, "re-run `fakelens export`")
    return OrtBackend(path, cfg, device, "onnx")


def onnx_int8_backend(folder: Path, cfg: DetectorConfig, device: str) -> OrtBackend:
    path = _artifact(folder, ONNX_INT8_FILE, "export with `fakelens export ... --int8`")
    return OrtBackend(path, cfg, device, "onnx-int8")


def onnx_fp16_backend(folder: Path, cfg: DetectorConfig, device: str) -> OrtBackend:
    path = _artifact(folder, ONNX_FP16_FILE, "export with `fakelens export ... --fp16`")
    return OrtBackend(path, cfg, device, "onnx-fp16")


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
        return out.float().reshape(-1).cpu().numpy()


def torchscript_backend(folder: Path, cfg: DetectorConfig, device: str) -> TorchScriptBackend:
    return TorchScriptBackend(_artifact(folder, TORCHSCRIPT_FILE, "re-run `fakelens export`"), cfg, device)


def cpu_has_bf16() -> bool:
    """True where OpenVINO can run bf16 natively (AMX / AVX512-BF16 CPUs)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoBackend:
    """OpenVINO CPU plugin reading model.onnx; `precision` is the inference precision hint."""

    def __init__(self, path: Path, cfg: DetectorConfig, device: str, name: str, precision: str):
        import openvino as ov

        if device != "cpu":
            raise ValueError(f"backend {name!r} runs on CPU only; use device='cpu' or backend 'onnx'/'torchscript'")
        self.name, self.device, self.precision = name, device, precision
        core = ov.Core()
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
        return np.asarray(self.compiled(x)[0]).reshape(-1)


def openvino_backend(folder: Path, cfg: DetectorConfig, device: str) -> OpenVinoBackend:
    """bf16 on CPUs that have it (AMX: ~4x ORT fp32 on vit_small, see docs/performance-runtimes.md)."""
    path = _artifact(folder, ONNX_FILE, "re-run `fakelens export`")
    return OpenVinoBackend(path, cfg, device, "openvino", "bf16" if cpu_has_bf16() else "f32")


def openvino_fp32_backend(folder: Path, cfg: DetectorConfig, device: str) -> OpenVinoBackend:
    path = _artifact(folder, ONNX_FILE, "re-run `fakelens export`")
    return OpenVinoBackend(path, cfg, device, "openvino-fp32", "f32")


# Which export file each backend needs (eager needs the checkpoint's model.safetensors).
BACKEND_FILES = {
    "torchscript": TORCHSCRIPT_FILE,
    "onnx": ONNX_FILE,
    "onnx-int8": ONNX_INT8_FILE,
    "onnx-fp16": ONNX_FP16_FILE,
    "openvino": ONNX_FILE,
    "openvino-fp32": ONNX_FILE,
}
