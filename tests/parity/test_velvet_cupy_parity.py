"""CuPy/CUDA Velvet kernels: compile check without a GPU (nvcc), launch parity with one."""

from __future__ import annotations

import shutil

import pytest
import torch
from _velvet_helpers import assert_states_close, run_parity

from vesper_core.errors import BackendUnavailableError
from vesper_optim.kernels import VelvetScalars, velvet_cupy


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_kernels_cu_compiles_with_nvcc(arch, tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "compile_kernels", Path(__file__).resolve().parents[2] / ".ci" / "compile_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    size = mod.compile_cuda_source(velvet_cupy.KERNEL_SOURCE, arch, tmp_path)
    assert size > 0


def test_cupy_backend_explains_itself_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailableError, match="vesper\\[cuda\\]|GPU"):
        velvet_cupy.velvet_cupy_([torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)], VelvetScalars(
            lr_e=1e-3, beta1_e=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, bias_correction1=0.1,
            bias_correction2=1e-3, sparse=False))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("multi_tensor", [True, False], ids=["multi", "single"])
def test_velvet_cupy_matches_reference(dtype, sparse, multi_tensor):
    pytest.importorskip("cupy")
    got, want = run_parity(velvet_cupy.velvet_cupy_, [1, 127, 1000, 4099, 70001], dtype, sparse=sparse,
                           num_steps=20, device="cuda", multi_tensor=multi_tensor)
    assert_states_close(got, want, dtype)
