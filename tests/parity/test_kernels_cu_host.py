"""kernels.cu without a GPU: compiled for the host CPU with g++, run against the reference.

``cuda_host/cuda_host_compat.h`` supplies the CUDA names kernels.cu uses and a launcher that runs
every (block, thread) of a grid serially (exact here: the kernels are elementwise grid-stride
loops with no shared memory, __syncthreads or atomics; the header leaves those undefined so the
build breaks if that changes). ``cuda_host/kernels_host.cpp`` includes kernels.cu unchanged and
exports ``launch_*`` wrappers taking velvet_cupy.py's grid/block and argument list.

``host_velvet_`` below mirrors ``velvet_cupy.velvet_cupy_``: same ``fold_scalars`` (f64 on the
host, each scalar rounded to f32 by ctypes as by ``np.float32``), same kernel names, block size
(THREADS) and chunk size (CHUNK_SIZE), the chunk table from velvet_cupy's own ``_table_entries``,
and the same grid formulas (the multi-tensor one for an H100's 132 SMs). The "few" grids (2 or 3
blocks) make every block run its grid-stride loop over several elements or chunks.

Reference: ``vesper_optim.functional._single_tensor_velvet`` (the spec), 20 steps with lr_e and
beta1_e varying each step and bc1 = 1 - prod(beta1_e), bc2 = 1 - beta2**t (helpers' schedule,
as the functional core computes them). The spec is fed beta1_e and beta2 rounded to f32, i.e. the
values the kernel receives: the kernel forms 1 - beta in f32 from the rounded beta (exact, by
Sterbenz), while the spec forms it in f64 from the unrounded one; for beta2 = 0.999 the two
differ by 1.3e-5 relative (1.7e-4 for 0.9999), so v would differ by that much from the verbatim
spec. ``test_v_matches_verbatim_spec`` records that deviation as a strict xfail.

Tolerances (measured worst case after 20-25 steps in brackets): params and m rtol = atol = 1e-6, as
the other parity tests (p 2.7e-7 relative, m 1.8e-7 absolute: the kernel folds lr_e/bc1 and
1/sqrt(bc2) into f32 on the host and computes beta1*m + (1-beta1)*g where the spec uses lerp, a
few f32 ulps per step). v rtol = 1e-6, atol = 1e-8 (7e-9 absolute on v ~ 0.03): v is small at
these steps, so atol 1e-6 would hide errors of 3e-5 relative. bf16 params: at most 1 bf16 ulp per
step (both round to nearest even, from f32 values a few ulps apart), then the reference param is
re-synced to the kernel's, as in _velvet_helpers.run_parity.
"""

from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from _velvet_helpers import step_schedule

from vesper_optim.functional import _single_tensor_velvet
from vesper_optim.kernels import VelvetScalars, velvet_cupy
from vesper_optim.kernels._common import fold_scalars, group_by_device_dtype

HOST_DIR = Path(__file__).resolve().parent / "cuda_host"
KERNELS_DIR = velvet_cupy.KERNEL_SOURCE.parent
THREADS = velvet_cupy.THREADS
CHUNK = velvet_cupy.CHUNK_SIZE
H100_SMS = 132
NUM_STEPS = 20
F32_TOL = dict(rtol=1e-6, atol=1e-6)  # params, exp_avg
V_TOL = dict(rtol=1e-6, atol=1e-8)    # exp_avg_sq
# < chunk, several chunks with a ragged tail, an exact multiple of the chunk, and 2-D shapes.
MULTI_SHAPES = [(1,), (127,), (1000,), (CHUNK,), (CHUNK + 1,), (2 * CHUNK + 517,), (37, 101)]
SINGLE_SHAPES = [(1,), (255,), (257,), (4099,), (61, 67)]

_F = ctypes.c_float
_SCALAR_TYPES = [_F, _F, _F, _F, _F, _F, ctypes.c_int]  # decay beta1 beta2 eps step_size inv_sqrt_bc2 sparse
_P = ctypes.c_void_p
_LL = ctypes.c_longlong
_U = ctypes.c_uint


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tensors here are <= 70K elements: one intra-op thread is as fast, and it keeps the run time
    steady on a busy 2-core machine (two spinning OpenMP threads made it vary 3x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """kernels.cu + the compat header, built once per session as a shared library."""
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not on PATH: cannot build vesper_optim/kernels/kernels.cu for the host CPU")
    out = tmp_path_factory.mktemp("kernels_cu_host") / "kernels_host.so"
    cmd = [cxx, "-O2", "-shared", "-fPIC", "-std=c++17", f"-I{HOST_DIR}", f"-I{KERNELS_DIR}",
           str(HOST_DIR / "kernels_host.cpp"), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"host build of kernels.cu failed:\n{' '.join(cmd)}\n{proc.stderr}"
    so = ctypes.CDLL(str(out))
    for dt in ("f32", "bf16"):
        fn = getattr(so, f"launch_velvet_single_{dt}")
        fn.argtypes, fn.restype = [_U, _U, _P, _P, _P, _P, _LL, *_SCALAR_TYPES], None
        fn = getattr(so, f"launch_velvet_multi_{dt}")
        fn.argtypes, fn.restype = [_U, _U, _P, ctypes.c_int, _LL, _LL, *_SCALAR_TYPES], None
    so.host_f32_to_bf16_bits.argtypes, so.host_f32_to_bf16_bits.restype = [_P, _P, _LL], None
    so.host_bf16_bits_to_f32.argtypes, so.host_bf16_bits_to_f32.restype = [_P, _P, _LL], None
    return so


# -- the host backend: velvet_cupy_'s launch sequence, with launch_* instead of RawKernels ----------

_DT = {torch.float32: "f32", torch.bfloat16: "bf16"}


def multi_blocks(num_chunks: int, grid: str) -> int:
    # velvet_cupy._num_blocks: max(1, min(num_chunks, sms * 8))
    return max(1, min(num_chunks, H100_SMS * 8)) if grid == "cupy" else 3


def single_blocks(n: int, grid: str) -> int:
    # velvet_cupy_ (multi_tensor=False): max(1, min(ceil(n / THREADS), 65535 * 8))
    return max(1, min((n + THREADS - 1) // THREADS, 65535 * 8)) if grid == "cupy" else 2


def host_velvet_(lib, params, grads, exp_avgs, exp_avg_sqs, scalars: VelvetScalars, *, multi_tensor: bool,
                 grid: str):
    s = fold_scalars(scalars)
    args = (s.decay, s.beta1, s.beta2, s.eps, s.step_size, s.inv_sqrt_bc2, 1 if scalars.sparse else 0)
    for (_, dtype), quads in group_by_device_dtype(params, grads, exp_avgs, exp_avg_sqs).items():
        assert all(t.is_contiguous() for q in quads for t in q)
        if multi_tensor:
            flat, num_tensors, num_chunks = velvet_cupy._table_entries(quads)
            table = torch.tensor(flat, dtype=torch.int64)
            getattr(lib, f"launch_velvet_multi_{_DT[dtype]}")(
                multi_blocks(num_chunks, grid), THREADS, table.data_ptr(), num_tensors, num_chunks, CHUNK, *args)
        else:
            kern = getattr(lib, f"launch_velvet_single_{_DT[dtype]}")
            for p, g, m, v in quads:  # bf16: data_ptr() is the raw 16-bit storage the kernel expects
                n = p.numel()
                kern(single_blocks(n, grid), THREADS, p.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(), n,
                     *args)


# -- state and comparison ----------------------------------------------------------------------------


def make_state(shapes, dtype, *, sparse: bool, seed: int = 0):
    """Params (sparse: exact zeros every 7th element plus values just below / above the 1e-9
    threshold) and f32 moments: zero, but non-zero under frozen elements so that "untouched"
    differs from "reset"."""
    gen = torch.Generator().manual_seed(seed)
    params, ms, vs = [], [], []
    for shape in shapes:
        p = torch.randn(shape, generator=gen)
        if sparse:
            flat = p.view(-1)
            flat[::7] = 0.0
            flat[3::11] = 5e-10   # |p| < 1e-9 (also in bf16): frozen
            flat[5::13] = -2e-9   # |p| >= 1e-9: updated
        p = p.to(dtype)
        # zero moments (the schedule starts at t = 1), except under frozen elements of a sparse group
        frozen = p.float().abs() < 1e-9 if sparse else torch.zeros(shape, dtype=torch.bool)
        ms.append(torch.where(frozen, 0.1 * torch.randn(shape, generator=gen), 0.0))
        vs.append(torch.where(frozen, 0.01 * torch.rand(shape, generator=gen), 0.0))
        params.append(p)
    return params, ms, vs


def _ordered_bits(x: torch.Tensor) -> torch.Tensor:
    """bf16 bit patterns mapped to integers that count ulps monotonically across zero."""
    b = x.view(torch.int16).to(torch.int32)
    return torch.where(b < 0, -(b & 0x7FFF), b)


def assert_bf16_within_one_ulp(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    ulps = (_ordered_bits(got) - _ordered_bits(want)).abs()
    worst = int(ulps.max()) if ulps.numel() else 0
    assert worst <= 1, f"{what}: bf16 params differ by {worst} ulps (allowed 1)"


def as_f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def run_host_vs_reference(lib, shapes, dtype, *, sparse, multi_tensor, grid, num_steps=NUM_STEPS,
                          verbatim_spec=False):
    a_p, a_m, a_v = make_state(shapes, dtype, sparse=sparse)
    b_p, b_m, b_v = ([t.clone() for t in lst] for lst in (a_p, a_m, a_v))
    m0, v0 = [t.clone() for t in a_m], [t.clone() for t in a_v]
    frozen = [p.float().abs() < 1e-9 if sparse else torch.zeros(p.shape, dtype=torch.bool) for p in a_p]
    p0 = [p.clone() for p in a_p]
    gen = torch.Generator().manual_seed(100)
    for t, scalars in step_schedule(num_steps, sparse=sparse, varying=True):
        grads = [torch.randn(shape, generator=gen).to(dtype) for shape in shapes]
        host_velvet_(lib, a_p, grads, a_m, a_v, scalars, multi_tensor=multi_tensor, grid=grid)
        spec = scalars if verbatim_spec else replace(scalars, beta1_e=as_f32(scalars.beta1_e),
                                                     beta2=as_f32(scalars.beta2))
        _single_tensor_velvet(b_p, grads, b_m, b_v, spec)
        if dtype != torch.float32:
            for i, (x, y) in enumerate(zip(a_p, b_p)):
                assert_bf16_within_one_ulp(x, y, f"param[{i}] step {t}")
                y.copy_(x)
    for i in range(len(shapes)):
        torch.testing.assert_close(a_p[i], b_p[i], **F32_TOL, msg=lambda m, i=i: f"param[{i}]: {m}")
        torch.testing.assert_close(a_m[i], b_m[i], **F32_TOL, msg=lambda m, i=i: f"exp_avg[{i}]: {m}")
        torch.testing.assert_close(a_v[i], b_v[i], **V_TOL, msg=lambda m, i=i: f"exp_avg_sq[{i}]: {m}")
        f, live = frozen[i], ~frozen[i]
        if sparse:  # frozen elements: bit-for-bit untouched
            assert torch.equal(a_p[i][f], p0[i][f]), f"param[{i}]: frozen elements changed"
            assert torch.equal(a_m[i][f], m0[i][f]), f"exp_avg[{i}]: frozen elements changed"
            assert torch.equal(a_v[i][f], v0[i][f]), f"exp_avg_sq[{i}]: frozen elements changed"
        # every live element was updated (no chunk or grid-stride iteration skipped)
        assert (a_m[i][live] != m0[i][live]).all(), f"exp_avg[{i}]: some elements never updated"
    if sparse:
        assert any(f.any() for f in frozen) and not all(f.all() for f in frozen)


# -- tests ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", ["cupy", "few"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_single_tensor_kernel_matches_reference(lib, dtype, sparse, grid):
    run_host_vs_reference(lib, SINGLE_SHAPES, dtype, sparse=sparse, multi_tensor=False, grid=grid)


@pytest.mark.parametrize("grid", ["cupy", "few"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_multi_tensor_kernel_matches_reference(lib, dtype, sparse, grid):
    run_host_vs_reference(lib, MULTI_SHAPES, dtype, sparse=sparse, multi_tensor=True, grid=grid)


def test_chunk_table_layout():
    """velvet_cupy._table_entries: the layout kernels.cu documents, chunks tiling each tensor."""
    shapes = [(1,), (CHUNK - 1,), (CHUNK,), (2 * CHUNK + 3,)]
    quads = [tuple(torch.empty(s) for _ in range(4)) for s in shapes]
    flat, T, C = velvet_cupy._table_entries(quads)
    assert T == 4 and C == 1 + 1 + 1 + 3 and len(flat) == 5 * T + 2 * C
    for k in range(4):
        assert flat[k * T:(k + 1) * T] == [q[k].data_ptr() for q in quads]
    numels = flat[4 * T:5 * T]
    tidx, starts = flat[5 * T:5 * T + C], flat[5 * T + C:]
    assert numels == [1, CHUNK - 1, CHUNK, 2 * CHUNK + 3]
    for t, n in enumerate(numels):
        mine = [s for ti, s in zip(tidx, starts) if ti == t]
        assert mine == list(range(0, n, CHUNK))  # covers [0, n) once, last chunk clipped by the kernel


def test_bf16_conversions_match_torch(lib):
    """The kernels' hand-written f32 -> bf16 (round to nearest even) and bf16 -> f32 vs torch."""
    gen = torch.Generator().manual_seed(3)
    bits = torch.randint(0, 2 ** 32, (200_000,), generator=gen, dtype=torch.int64)
    edge = [0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001,  # ties to even (down, up), just below/above
            0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000,  # max finite rounds to +-inf, inf
            0x00000000, 0x80000000, 0x00000001, 0x007FFFFF,  # +-0, denormals
            0x7FC00000, 0xFFFFFFFF, 0x7F800001]              # NaNs (incl. one that rounding would make inf)
    bits = torch.cat([torch.tensor(edge, dtype=torch.int64), bits])
    x = bits.to(torch.int32).view(torch.float32).contiguous()  # low 32 bits, reinterpreted
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    lib.host_f32_to_bf16_bits(x.data_ptr(), out.data_ptr(), x.numel())
    want = x.to(torch.bfloat16)
    nan = x.isnan()
    assert out[nan].isnan().all(), "a NaN did not stay NaN"
    assert torch.equal(out[~nan].view(torch.int16), want[~nan].view(torch.int16))
    back = torch.empty(x.shape, dtype=torch.float32)
    lib.host_bf16_bits_to_f32(out.data_ptr(), back.data_ptr(), x.numel())
    assert torch.equal(back[~nan], out[~nan].float()) and back[nan].isnan().all()


@pytest.mark.xfail(strict=True, reason="kernels.cu computes 1 - beta2 in f32 from the "
                   "f32-rounded beta2: v is 1.3e-5 relative away from the spec at beta2=0.999 (1.7e-4 at "
                   "0.9999); a fix passes 1 - beta1_e and 1 - beta2 folded in f64 on the host")
def test_v_matches_verbatim_spec(lib):
    run_host_vs_reference(lib, SINGLE_SHAPES, torch.float32, sparse=False, multi_tensor=False, grid="cupy",
                          verbatim_spec=True)
