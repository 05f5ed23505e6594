"""Export a trained detector to ONNX and TorchScript, verified by parity before it is kept.

    fakelens export RUN_OR_MODEL_DIR --out EXP [--int8] [--fp16] [--version V] [--data DATA]

Writes into a temp folder beside EXP, checks every artifact against the eager model
(models/runtime/parity.py), embeds the metadata in each artifact, then swaps the folder in with
models.core.atomic.replace_dir: a rejected export leaves no EXP behind (or the previous one).
Verification runs the runtime's own `Detector` (models/runtime/detector.py), which never imports
this module; making the shipped detector's export on first use is `models.runtime.loader`'s job.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.core.atomic import file_sha256, replace_dir
from models.core.checkpoint import CONFIG, WEIGHTS, find_model_dir, load_model_dir
from models.core.config import DetectorConfig
from models.core.metrics import roc_auc
from models.core.preprocess import ImageError, decode_image
from models.core.verdict import is_flagged
from models.runtime.backends import SPECS, BackendSpec, ModuleBackend
from models.runtime.detector import Detector
from models.runtime.metadata import (
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAME,
    TORCHSCRIPT_FILE,
    build_metadata,
    is_export_dir,
    set_onnx_metadata,
    write_metadata,
)
from models.runtime.parity import ParityResult, compare, parity_batches, raise_on_failure, run_all

# The same rule BentoML applies to tag versions, checked up front for a clearer message.
VERSION_RE = re.compile(r"^[a-z0-9]([-._a-z0-9]{0,61}[a-z0-9])?$")
# Cap on validation images scored per variant for the AUC change (each is a full pass per runtime).
MAX_VAL_IMAGES = 1000
# A runtime whose FPR at the threshold differs from eager's by more than this is not offered by `auto`.
FPR_DRIFT = 0.01


@dataclass(frozen=True)
class ExportOptions:
    int8: bool = False
    fp16: bool = False
    opset: int = 17
    version: str = ""  # overrides detector.json's version; default: it, else a timestamp


def check_version(version: str) -> str:
    if not VERSION_RE.match(version):
        raise ValueError(
            f"version {version!r} is not a valid model-store version: use lowercase letters, digits, "
            "'.', '-', '_' (max 63 characters, starting and ending with a letter or digit)"
        )
    return version


# The legacy exporter and the tracer warn about every Python-side shape check in timm; those
# are expected for fixed-size ViTs, and the parity check is what proves the graph right.
QUIET = "ignore"


def _onnx_file(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> str:
    try:
        torch.onnx.export(
            model, (example,), str(path), opset_version=opset, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True, dynamo=False,
        )
        return "torchscript"
    except Exception as first:  # any exporter failure: try the other one before giving up
        try:
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=max(opset, 18), input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
            )
            program.save(str(path))
            return "dynamo"
        except Exception as second:
            raise ValueError(
                f"ONNX export failed with both exporters: torchscript-based: {first}; dynamo: {second}"
            ) from None


def export_onnx(model: torch.nn.Module, cfg: DetectorConfig, path: Path, opset: int) -> str:
    """model.onnx with a dynamic batch axis. TorchScript-based exporter first: for timm ViTs it
    gave faster ORT graphs than dynamo here; dynamo is the fallback. Returns the exporter used."""
    import onnx

    size = cfg.preprocess.img_size
    with warnings.catch_warnings():
        warnings.simplefilter(QUIET)
        exporter = _onnx_file(model, torch.randn(2, 3, size, size), path, opset)
    onnx.checker.check_model(str(path))
    return exporter


def export_torchscript(model: torch.nn.Module, cfg: DetectorConfig, path: Path) -> torch.jit.ScriptModule:
    size = cfg.preprocess.img_size
    with warnings.catch_warnings():
        warnings.simplefilter(QUIET)
        traced = torch.jit.trace(model, torch.randn(2, 3, size, size))
        torch.jit.save(traced, str(path))
    return traced


def export_int8(src: Path, dst: Path) -> None:
    """Dynamic quantization: int8 weights, activations quantized per batch at run time (no calibration set)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic logs a root-level hint to run quant_pre_process; parity and the AUC
    # change are our checks, so keep that hint out of the user's terminal.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def export_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute for GPUs; float32 inputs/outputs so callers feed the same arrays.
    Uses onnxruntime.transformers.float16 (onnxconverter-common is not a dependency)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))


# Artifacts derived from model.onnx, by the BackendSpec.export_option that asks for them.
DERIVED_EXPORTERS: dict[str, Callable[[Path, Path], None]] = {"int8": export_int8, "fp16": export_fp16}


def _backend(name: str, folder: Path, cfg: DetectorConfig):
    return SPECS[name](folder, cfg, "cpu")


def exported_specs(folder: Path) -> list[BackendSpec]:
    """Every runtime that can load this export folder on CPU (what parity checks)."""
    return [s for s in SPECS.values() if s.is_export and "cpu" in s.devices and (folder / s.artifact).is_file()]


def check_parity(folder: Path, cfg: DetectorConfig, model: torch.nn.Module, names: Sequence[str]) -> list[ParityResult]:
    """Logits of each named runtime (loaded from `folder`) vs the eager model on fixed batches."""
    batches = parity_batches(cfg.preprocess.img_size)
    reference = run_all(ModuleBackend(model, "cpu"), batches)
    results = []
    for name in names:
        try:
            candidate = run_all(_backend(name, folder, cfg), batches)
        except Exception as e:  # a runtime that cannot even run the graph fails parity
            results.append(ParityResult(name, float("inf"), float("inf"), 0.0, "run", False, str(e)[:300]))
            continue
        results.append(compare(name, reference, candidate, cfg.temperature, cfg.attribution.temperature))
    return results


def backend_validation(folder: Path, cfg: DetectorConfig, model: torch.nn.Module, names: Sequence[str],
                       val: Sequence[tuple[str, int]]) -> dict[str, dict[str, Any]]:
    """Validation AUC and FPR/TPR at the shipped threshold for each runtime, beside eager fp32 on
    the same images. A runtime whose FPR at the threshold moves by more than FPR_DRIFT is marked
    not offered: `auto` will not pick it, since its verdicts would differ from the calibrated ones."""
    if len(val) > MAX_VAL_IMAGES:  # evenly spaced subset: deterministic, covers the whole list
        val = [val[i] for i in np.linspace(0, len(val) - 1, MAX_VAL_IMAGES).astype(int)]
    images, labels = [], []
    for path, label in val:
        try:
            images.append(decode_image(path)[0])
            labels.append(label)
        except (ImageError, OSError):  # an unreadable val file is skipped, as evaluation does
            continue
    labels = np.array(labels)

    def measure(backend) -> tuple[dict[str, float], np.ndarray]:
        det = Detector(cfg, backend, str(folder))
        p = np.concatenate([det.probabilities(images[i : i + 32]) for i in range(0, len(images), 32)])
        flagged = is_flagged(p, cfg)
        return {"auc": roc_auc(labels, p), "fpr_at_threshold": float(flagged[labels == 0].mean()),
                "tpr_at_threshold": float(flagged[labels == 1].mean())}, p

    ref, ref_p = measure(ModuleBackend(model, "cpu"))
    out = {"eager": {**ref, "val_images": len(images), "offered": True}}
    for name in names:
        got, p = measure(_backend(name, folder, cfg))
        drift = got["fpr_at_threshold"] - ref["fpr_at_threshold"]
        out[name] = {**got, "val_images": len(images), "auc_fp32": ref["auc"], "auc_change": got["auc"] - ref["auc"],
                     "fpr_drift": drift, "max_abs_prob_diff": float(np.max(np.abs(p - ref_p))),
                     "offered": abs(drift) <= FPR_DRIFT}
    return out


def _check_out(out: Path, source: Path) -> None:
    out, source = out.resolve(), source.resolve()
    if out == source or out in source.parents:
        raise ValueError(f"--out {out} would replace the checkpoint {source}; choose another folder")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_export_dir(out))):
        raise ValueError(f"--out {out} exists and is not an export folder; refusing to replace it")


def _write_artifact_metadata(tmp: Path, meta: dict[str, Any], traced: torch.jit.ScriptModule) -> None:
    write_metadata(tmp, meta)
    for name in sorted({s.artifact for s in exported_specs(tmp) if s.artifact.endswith(".onnx")}):
        set_onnx_metadata(tmp / name, meta)
    with warnings.catch_warnings():
        warnings.simplefilter(QUIET)
        torch.jit.save(traced, str(tmp / TORCHSCRIPT_FILE),
                       _extra_files={"metadata.json": json.dumps(meta, sort_keys=True)})


def export_model(checkpoint: str | Path, out: str | Path, options: ExportOptions = ExportOptions(),
                 val: Sequence[tuple[str, int]] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export, verify and atomically install EXP. Returns the metadata written."""
    source = find_model_dir(checkpoint)
    out = Path(out)
    _check_out(out, source)
    model, cfg = load_model_dir(source)
    version = check_version(options.version or cfg.version or time.strftime("%Y%m%d-%H%M%S"))
    cfg = replace(cfg, version=version)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        meta = _export_into(tmp, source, model, cfg, options, val, log)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"exported {cfg.name}:{version} to {out}")
    return meta


def _export_into(tmp: Path, source: Path, model: torch.nn.Module, cfg: DetectorConfig, options: ExportOptions,
                 val: Sequence[tuple[str, int]] | None, log: Callable[[str], None]) -> dict[str, Any]:
    started = time.time()
    exporter = export_onnx(model, cfg, tmp / ONNX_FILE, options.opset)
    traced = export_torchscript(model, cfg, tmp / TORCHSCRIPT_FILE)
    for spec in SPECS.values():
        if spec.export_option and getattr(options, spec.export_option):
            DERIVED_EXPORTERS[spec.export_option](tmp / ONNX_FILE, tmp / spec.artifact)
    cfg.save(tmp / CONFIG)
    specs = exported_specs(tmp)
    names = [s.name for s in specs if s.rejects_export]
    facts = dict(
        export_time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), opset=options.opset, exporter=exporter,
        source_checkpoint=str(source), weights_sha256=file_sha256(source / WEIGHTS),
        torch_version=torch.__version__, files=sorted({s.artifact for s in specs}),
    )
    _write_artifact_metadata(tmp, build_metadata(cfg, **facts, parity="pending"), traced)
    results = check_parity(tmp, cfg, model, names)
    # Recorded only (BackendSpec.rejects_export False): e.g. OpenVINO's bf16 result decides
    # whether `auto` may pick it on this CPU, but does not make the export fail.
    runtime_results = check_parity(tmp, cfg, model, [s.name for s in specs if not s.rejects_export])
    for r in results + runtime_results:
        log(r.line())
    raise_on_failure(results, "the export folder")
    trained_auc = (cfg.metrics.get("val") or {}).get("auc", cfg.metrics.get("val_auc"))
    variants = {n: {"auc_change": None, "auc_fp32": trained_auc,
                    "note": "pass --data DATA to measure this variant's validation AUC change"}
                for n in names if SPECS[n].prob_bound is not None}
    validation = None
    if val:
        # Every exported runtime that rejects a failed export, plus those `auto` may pick on a
        # recorded result (OpenVINO): a runtime whose verdicts drift is then not offered.
        checked = names + [s.name for s in specs if not s.rejects_export and s.auto_rank]
        validation = backend_validation(tmp, cfg, model, checked, val)
        for name, v in validation.items():
            if name != "eager":
                log(f"{name}: val AUC {v['auc']:.4f} vs eager {v['auc_fp32']:.4f} (change {v['auc_change']:+.4f}), "
                    f"FPR at threshold {v['fpr_at_threshold']:.3f} (drift {v['fpr_drift']:+.3f})"
                    f"{'' if v['offered'] else ' -> not offered by auto'}")
        variants = {n: validation[n] for n in variants}
    meta = build_metadata(cfg, **facts, parity={r.backend: r.to_dict() for r in results + runtime_results},
                          variants=variants, validation=validation, export_seconds=round(time.time() - started, 2))
    _write_artifact_metadata(tmp, meta, traced)
    # The files were rewritten to embed the metadata: check the final bytes, not the earlier ones.
    raise_on_failure(check_parity(tmp, cfg, model, names), "the export folder")
    return meta
