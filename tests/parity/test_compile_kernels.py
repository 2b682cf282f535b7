"""CI compile check from pytest: Triton kernels lower to an sm_90 cubin, kernels.cu builds with nvcc.

Triton runs in a subprocess: other test modules set TRITON_INTERPRET=1 in this process, and
interpreted kernels cannot be compiled.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "compile_kernels.py"


@pytest.mark.triton
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--only", "triton", "--quick"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "velvet_multi_tensor" in proc.stdout and "era_bwd" in proc.stdout


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_compile_script_cuda_part():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--only", "cuda"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("OK    cuda") == 2
