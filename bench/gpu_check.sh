#!/usr/bin/env bash
# GPU checks for a session with a lent GPU: one prepared script, at most 7 minutes wall time.
#
#   bash bench/gpu_wheels.sh                # here: BentoML, C2PA + the deps the GPU image lacks -> .whl/ (27 MiB)
#   bash bench/gpu_check.sh                 # there, from the repo root, with `.whl` carried
#   bash bench/gpu_check.sh --dry-run       # here (CPU): every section at tiny sizes, same entry points
#   bash bench/gpu_check.sh --legacy        # also the older runtimes/serve/training sections (~12 min)
#   bash bench/gpu_check.sh --sections serve-batch,serve   # only these sections (a short device budget)
#
# Sections, each under its own `timeout` and printing its own table; every timeout is also
# capped by what is left of the 7-minute total, so the script always ends in time:
#   model   model-only img/s, vit_small and the default detector's backbone (CLIP ViT-B/16),
#           eager fp32 / eager bf16 / bf16 + torch.compile / bf16 CUDA graph, batch 1/32/256,
#           beside the bf16 GEMM ceiling of the same run (bench/gpu_bench.py)
#   pixels  the batched model path of the service/scorer without HTTP: uint8 views -> GPU ->
#           normalise -> model, vs the model alone (same eager fp32 backend)
#   decode  JPEG decode + crop + normalise: torchvision.io.decode_jpeg(device="cuda") vs Pillow threads
#   serve-batch  the same server fed /detect_batch requests of 32 images from 4 client processes, with
#           the CPU ms per image of the front, the model process and the clients (where a front's limit is),
#           JPEGs decoded in the model process (nvJPEG) vs in the front (Pillow), interleaved
#   serve   `fakelens serve` with adaptive batching on the GPU, 64 clients (bench/serve_load.py), when
#           BentoML is importable (from .whl/); otherwise says so (the pixels section is the no-HTTP figure)
#   score   `fakelens score`'s local engine --device cuda on generated JPEGs vs model-only
#           (bench/score_throughput.py), Pillow decode in processes vs JPEGs decoded on the GPU (nvJPEG)
# Targets (issue 12): vit_small model-only >= 20,000 img/s; served >= 0.8x model-only.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0; LEGACY=0; SECTIONS=model,pixels,decode,serve-batch,serve,score
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --legacy) LEGACY=1 ;;
    --sections) SECTIONS=$2; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --dry-run, --legacy or --sections a,b)" >&2; exit 2 ;;
  esac
  shift
done
TOTAL_S=${TOTAL_S:-410}  # 7 minutes less a margin for the machine's own start/stop
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE

if [ "$DRY" = 0 ]; then
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check.sh: no CUDA device visible (torch.cuda.is_available() is False); run it on a GPU machine" \
         "or use --dry-run" >&2
    exit 2
  fi
  if ls .whl/*.whl >/dev/null 2>&1; then
    timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site \
      || echo "# wheel install from .whl/ failed: the serve section will be skipped"
  fi
  DEV=cuda
else
  DEV=cpu
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

# run NAME LIMIT_S CMD...: one section under min(LIMIT_S, time left) seconds
run() {
  local name=$1 limit=$2; shift 2
  case ",$SECTIONS," in *",$name,"*) ;; *) return ;; esac
  local left=$((TOTAL_S - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then echo "# section $name skipped: the 7-minute budget is spent"; return; fi
  echo; echo "### $name (limit ${limit}s, t=${SECONDS}s)"
  timeout -k 5 "$limit" "$@"
  local rc=$?
  [ "$rc" = 0 ] || echo "# section $name failed or timed out (exit $rc)"
}

"$PY" - <<'EOF'
import platform, torch, torchvision
print("# python", platform.python_version(), "torch", torch.__version__, "torchvision", torchvision.__version__)
if torch.cuda.is_available():
    print("# GPU:", torch.cuda.get_device_name(0))
try:
    import onnxruntime as o; print("# onnxruntime providers:", o.get_available_providers())
except ImportError:
    print("# onnxruntime not installed")
try:
    import bentoml; print("# bentoml", bentoml.__version__)
except ImportError as e:
    print("# bentoml not importable:", e)
EOF

ARCHS=vit_small_patch16_224,vit_base_patch16_clip_quickgelu_224
if [ "$DRY" = 0 ]; then
  # largest batch first: if compiles eat the budget, the throughput rows are already in
  run model 160 "$PY" -m bench.gpu_bench model --archs "$ARCHS" --batches 256,32,1 --repeats 2 --seconds 0.3 \
    --budget-s 130
  run pixels 35 "$PY" -m bench.gpu_bench pixels --archs "$ARCHS" --batch 256 --repeats 3 --seconds 0.3
  run decode 30 "$PY" -m bench.gpu_bench decode --n 1024 --threads 16 --repeats 3 --seconds 0.3
  if "$PY" -c 'import bentoml' 2>/dev/null; then
    # 8 front workers; the model process batches up to 256 on the GPU. model-decode: JPEG bytes go
    # to the model process and nvJPEG decodes them there; front-decode: Pillow in the front workers.
    FAKELENS_WORKERS=8 FAKELENS_MAX_BATCH_SIZE=256 FAKELENS_MAX_INFLIGHT=512 \
      run serve-batch 150 "$PY" -m bench.serve_load --arch vit_small_patch16_224 --device cuda --model-batch 256 \
      --servers model-decode,front-decode --concurrency 16 --requests 240 --rounds 2 --per-request 32 --client-procs 4
    FAKELENS_WORKERS=8 FAKELENS_MAX_BATCH_SIZE=256 FAKELENS_MAX_INFLIGHT=512 \
      run serve 100 "$PY" -m bench.serve_load --arch vit_small_patch16_224 --device cuda --model-batch 256 \
      --servers batched --concurrency 64 --requests 1500 --rounds 3
  else
    echo; echo "### serve: not measured, BentoML is not importable (run bench/gpu_wheels.sh and carry .whl);" \
      "the pixels section is the batched model path without HTTP"
  fi
  run score 75 "$PY" bench/score_throughput.py --device cuda --no-export --arch vit_small_patch16_224 \
    --n 2000 --batch-size 256 --workers 14 --rounds 2 --decode processes --decode-on workers,device
else
  run model 150 "$PY" -m bench.gpu_bench model --device cpu --small --archs "$ARCHS" --batches 2 --repeats 1 \
    --seconds 0.05 --modes eager-fp32,eager-bf16,compile-bf16
  run pixels 30 "$PY" -m bench.gpu_bench pixels --device cpu --small --archs "$ARCHS" --batch 4 --repeats 1 \
    --seconds 0.05
  run decode 30 "$PY" -m bench.gpu_bench decode --device cpu --n 16 --threads 2 --repeats 1 --seconds 0.05
  FAKELENS_WORKERS=1 FAKELENS_MAX_BATCH_SIZE=8 \
    run serve 120 "$PY" -m bench.serve_load --arch vit_tiny_patch16_224 --device cpu --model-batch 8 \
    --servers batched --concurrency 4 --requests 16 --rounds 1
  FAKELENS_WORKERS=1 FAKELENS_MAX_BATCH_SIZE=8 \
    run serve-batch 120 "$PY" -m bench.serve_load --arch vit_tiny_patch16_224 --device cpu --model-batch 8 \
    --servers model-decode,front-decode --concurrency 2 --requests 8 --rounds 1 --per-request 4 --client-procs 2
  run score 90 "$PY" bench/score_throughput.py --device cpu --no-export --arch vit_tiny_patch16_224 \
    --n 24 --batch-size 8 --workers 2 --rounds 1 --decode processes,threads --decode-on workers,device
fi
echo; echo "# gpu_check.sh done in ${SECONDS}s (budget ${TOTAL_S}s)"

if [ "$LEGACY" = 1 ] && [ "$DRY" = 0 ]; then
  # Earlier issues' sections (runtimes 3, serve 4, training 6): about 12 minutes more; run alone.
  timeout 300 "$PY" bench/runtimes.py --device cuda --models vit_small_patch16_224 \
    --batches 1,8,32 --repeats 3 --seconds 1.0
  timeout 100 "$PY" bench/train_throughput.py --device cuda --sections synthetic --batch-size 128 \
    --steps 10 --repeats 3 --variants eager-fp32,eager-bf16,compile-bf16 --peak-tflops 989
  TT=$(mktemp -d)
  "$PY" -m models.commands demo-data "$TT/demo" --n 800 >/dev/null
  timeout 60 "$PY" -m training --data "$TT/demo" --out "$TT/run" --model vit_small_patch16_224 --epochs 1 \
    --batch-size 128 --workers 8 --device cuda --no-progress >/dev/null 2>&1 \
    && "$PY" -c 'import json,sys; m=json.loads(open(sys.argv[1]).readlines()[-1]); print("# fakelens train epoch (bf16, 8 workers): %.0f img/s, data_wait_fraction %.1f%%" % (m["images_per_s"], 100*m["data_wait_fraction"]))' "$TT/run/metrics.jsonl" \
    || echo "# fakelens train GPU epoch failed or timed out"
  rm -rf "$TT"
fi
