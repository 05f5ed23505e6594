"""Export metadata: what an exported detector is, how to feed it and how to read its output.

The same facts are written three ways so each artifact stands alone:
- `EXP/metadata.json` beside the files (what `fakelens models show` and the store read);
- ONNX `metadata_props` (string -> string; structured values as JSON), so plain
  `onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map` names the
  preprocessing, temperature and threshold without any project code;
- TorchScript `_extra_files["metadata.json"]`.

The file names of every artifact live here too, and the facts the runtime reads back from an
export (`offered_int8_backend`: whether the int8 gate let `auto` pick a static int8 copy), so
loading an export never needs the code that made it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.core.atomic import atomic_write_text
from models.core.config import DetectorConfig

METADATA = "metadata.json"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
ONNX_FP16_FILE = "model.fp16.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"
# Static int8 copies written by `fakelens quantize` (models/runtime/quantize.py), and its record's key.
INT8_STATIC_FILE = "model.int8-static.onnx"  # ONNX Runtime QDQ (onnx-int8-static)
INT8_OPENVINO_FILE = "model.int8-static.xml"  # NNCF OpenVINO IR, weights in the .bin beside it (openvino-int8)
INT8_BACKENDS = ("openvino-int8", "onnx-int8-static")
INT8_FILES = {"openvino-int8": INT8_OPENVINO_FILE, "onnx-int8-static": INT8_STATIC_FILE}
INT8_META_KEY = "int8_static"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
FORMAT_VERSION = 1


def build_metadata(cfg: DetectorConfig, **export_facts: Any) -> dict[str, Any]:
    """The full metadata record: the detector config's facts plus how it was exported."""
    return {
        "format_version": FORMAT_VERSION,
        "name": cfg.name,
        "version": cfg.version,
        "arch": cfg.arch,
        "model_kwargs": dict(cfg.model_kwargs),
        "preprocess": cfg.to_dict()["preprocess"],
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, cfg.preprocess.img_size, cfg.preprocess.img_size],
                  "dtype": "float32", "layout": "NCHW, RGB, (x/255 - mean) / std"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", cfg.outputs],
                   "meaning": "column 0: logit; probability synthetic = sigmoid(logit / temperature); "
                              "columns 1..K (when families are listed): family logits, "
                              "probabilities = softmax(logits / attribution.temperature)",
                   "families": list(cfg.attribution.families)},
        "attribution": cfg.to_dict()["attribution"],
        "temperature": cfg.temperature,
        "threshold": cfg.threshold,
        "target_fpr": cfg.target_fpr,
        "metrics": dict(cfg.metrics),
        "data_fingerprint": cfg.data_fingerprint,
        **export_facts,
    }


def to_string_map(meta: dict[str, Any]) -> dict[str, str]:
    """Flatten for ONNX metadata_props: strings stay, everything else becomes JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()}


def set_onnx_metadata(path: Path, meta: dict[str, Any]) -> None:
    """Rewrite an ONNX file's metadata_props in place (the graph is untouched)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in to_string_map(meta).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def write_metadata(folder: Path, meta: dict[str, Any]) -> None:
    atomic_write_text(folder / METADATA, json.dumps(meta, indent=2, sort_keys=True))


def read_metadata(folder: Path) -> dict[str, Any]:
    path = Path(folder) / METADATA
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing: {folder} is not a complete export; re-run `fakelens export`"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-run `fakelens export`") from None


def is_export_dir(folder: Path) -> bool:
    return any((Path(folder) / name).exists() for name in (ONNX_FILE, TORCHSCRIPT_FILE, METADATA))


def offered_int8_backend(meta: dict[str, Any]) -> str | None:
    """The int8 runtime `auto` may pick for an export, read from the int8 gate's record in its
    metadata (models/runtime/quantize.py writes it): None unless the gate passed and it was faster."""
    record = meta.get(INT8_META_KEY)
    if (isinstance(record, dict) and record.get("passed") is True and record.get("faster") is True
            and record.get("backend") in INT8_BACKENDS):
        return record["backend"]
    return None
