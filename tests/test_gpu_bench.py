"""bench/gpu_check.sh's Python entry points run here on CPU at tiny sizes, so the one real GPU
run does not die on a typo; the full `bash bench/gpu_check.sh --dry-run` covers serve and score too."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from bench import gpu_bench

REPO = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--small", "--repeats", "1", "--seconds", "0.01"]


def test_gpu_check_script_parses_and_refuses_unknown_flags():
    subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu_check.sh")], check=True)
    out = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--bogus"], capture_output=True, text=True)
    assert out.returncode == 2 and "--dry-run" in out.stderr


def test_model_section_prints_a_row_per_mode_and_the_gemm_ceiling(capsys):
    assert gpu_bench.main(["model", *TINY, "--archs", "vit_small_patch16_224,vit_base_patch16_clip_quickgelu_224",
                           "--batches", "2", "--modes", "eager-fp32,eager-bf16"]) == 0
    out = capsys.readouterr().out
    assert "GEMM ceiling" in out
    rows = [line for line in out.splitlines() if line.startswith("| vit_")]
    assert len(rows) == 4 and not any("skipped" in r for r in rows)


def test_decode_and_pixel_sections_run(capsys):
    assert gpu_bench.main(["decode", *TINY, "--n", "4", "--threads", "1"]) == 0
    assert gpu_bench.main(["pixels", *TINY, "--archs", "vit_small_patch16_224", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "device_views(device='cpu')" in out and "| vit_small_patch16_224 |" in out
    assert "max abs diff 0 levels" in out  # on CPU the model-side decode is Pillow's pixels exactly


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no GPU is visible")
def test_cuda_without_a_gpu_says_what_to_do(capsys):
    assert gpu_bench.main(["model"]) == 2
    assert "--device cpu" in capsys.readouterr().err
