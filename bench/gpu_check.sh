#!/usr/bin/env bash
# GPU checks for a session that has a device machine (15 minutes of device time in all).
#
#   bash bench/gpu_check.sh            # from the repository root
#
# Installs nothing heavy; fails fast when no CUDA device is visible. Each section is short
# and prints its own table; later issues add their sections below.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check.sh: no CUDA device visible (torch.cuda.is_available() is False); run it on a GPU machine" >&2
  exit 2
fi
"$PY" -c 'import torch; print("# GPU:", torch.cuda.get_device_name(0))'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c 'import onnxruntime as o; print("# onnxruntime providers:", o.get_available_providers())'

# --- runtimes (issue 3) ---
# eager fp32/fp16/bf16 autocast, TorchScript fp16, ORT CUDA fp32/fp16 (skipped with a note
# when onnxruntime has no CUDAExecutionProvider), vit_small at batch 1/8/32.
timeout 300 "$PY" bench/runtimes.py --device cuda --models vit_small_patch16_224 \
  --batches 1,8,32 --repeats 3 --seconds 1.0

# --- serve (issue 4) ---
# The service with its model process on the GPU (FAKELENS_DEVICE=cuda, inherited by the
# servers the bench starts), adaptive batching on vs off, 1/8/32 clients on 127.0.0.1.
FAKELENS_DEVICE=cuda timeout 240 "$PY" -m bench.serve_load --requests 300 --rounds 3 \
  --servers batched,unbatched --concurrency 1,8,32 || echo "# serve bench failed or timed out"

# --- training throughput (issue 6) ---
# vit_small @ 224 full train steps (AdamW) on in-memory batches: eager fp32/bf16 vs compile
# bf16, images/s and MFU against the H100/H200 SXM bf16 dense peak; then one real epoch of
# `fakelens train` (bf16, 8 loader workers) to read data_wait_fraction: is decode the bottleneck?
timeout 100 "$PY" bench/train_throughput.py --device cuda --sections synthetic --batch-size 128 \
  --steps 10 --repeats 3 --variants eager-fp32,eager-bf16,compile-bf16 --peak-tflops 989
TT=$(mktemp -d)
"$PY" -m models.commands demo-data "$TT/demo" --n 800 >/dev/null
timeout 60 "$PY" -m training --data "$TT/demo" --out "$TT/run" --model vit_small_patch16_224 --epochs 1 \
  --batch-size 128 --workers 8 --device cuda --no-progress >/dev/null 2>&1 \
  && "$PY" -c 'import json,sys; m=json.loads(open(sys.argv[1]).readlines()[-1]); print("# fakelens train epoch (bf16, 8 workers): %.0f img/s, data_wait_fraction %.1f%%" % (m["images_per_s"], 100*m["data_wait_fraction"]))' "$TT/run/metrics.jsonl" \
  || echo "# fakelens train GPU epoch failed or timed out"
rm -rf "$TT"
