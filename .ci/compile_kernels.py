#!/usr/bin/env python
"""Compile every Vesper GPU kernel without a GPU; exit non-zero if any fails.

* Triton kernels (Velvet, ERA): ``triton.compile`` for ``GPUTarget("cuda", 90, 32)``
  (H100), which runs the real lowering down to a cubin.
* ``vesper_optim/kernels/kernels.cu`` (CuPy RawModule source): ``nvcc -cubin`` for sm_80 and sm_90.

    python .ci/compile_kernels.py [--only triton|cuda] [--quick]

One line per kernel: ``OK|FAIL  <kind>  <name>  <detail>``. ``--quick`` compiles one variant
per Triton kernel (used by the pytest wrapper to stay fast). Without nvcc the CUDA part is
reported as SKIP (exit 0 only if ``--allow-missing-nvcc`` is given).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CUDA_SOURCE = REPO / "vesper_optim" / "kernels" / "kernels.cu"
CUDA_ARCHS = ("sm_80", "sm_90")
TRITON_MODULES = (
    "vesper_optim.kernels.velvet_triton",
    "vesper_core.kernels.era_triton",
)


def _prepare_triton_env() -> None:
    # The interpreter replaces @triton.jit functions by interpreted ones that cannot be compiled.
    if os.environ.get("TRITON_INTERPRET") == "1" and "triton" in sys.modules:
        raise RuntimeError("TRITON_INTERPRET=1 was set before triton was imported; run this in a fresh process")
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def triton_specs(quick: bool = False):
    """All (name, jit fn, signature, constexprs) the kernel modules declare in ``compile_specs()``."""
    import importlib

    specs = []
    for modname in TRITON_MODULES:
        mod = importlib.import_module(modname)
        mod_specs = mod.compile_specs()
        if quick:
            seen, kept = set(), []
            for spec in mod_specs:
                base = spec[0].split("[")[0]
                if base not in seen:
                    seen.add(base)
                    kept.append(spec)
            mod_specs = kept
        specs.extend(mod_specs)
    return specs


def compile_triton_spec(spec, cc: int = 90) -> int:
    """Compile one spec for ``cuda:cc``; returns the cubin size in bytes (raises on failure)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    _, fn, signature, constexprs = spec
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                            target=GPUTarget("cuda", cc, 32))
    return len(kernel.asm["cubin"])


def compile_cuda_source(source: Path, arch: str, out_dir: Path) -> int:
    """``nvcc -arch=<arch> -cubin`` with warnings as errors; returns the cubin size in bytes."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise FileNotFoundError("nvcc not found on PATH")
    out = Path(out_dir) / f"{Path(source).stem}.{arch}.cubin"
    cmd = [nvcc, f"-arch={arch}", "-cubin", "-std=c++14", "-Werror", "all-warnings", "-o", str(out), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr.strip()}")
    return out.stat().st_size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Compile Vesper GPU kernels for sm_80/sm_90 without a GPU")
    ap.add_argument("--only", choices=("triton", "cuda"), default=None)
    ap.add_argument("--quick", action="store_true", help="one variant per Triton kernel")
    ap.add_argument("--allow-missing-nvcc", action="store_true")
    args = ap.parse_args(argv)
    failures = 0

    if args.only in (None, "triton"):
        _prepare_triton_env()
        sys.path.insert(0, str(REPO))
        try:
            specs = triton_specs(quick=args.quick)
        except Exception as exc:  # noqa: BLE001 - report, count, go on
            print(f"FAIL  triton  <import>  {type(exc).__name__}: {exc}")
            failures += 1
            specs = []
        if not specs and failures == 0:
            print("FAIL  triton  <none>  no Triton kernels found (is triton installed?)")
            failures += 1
        for spec in specs:
            t0 = time.perf_counter()
            try:
                size = compile_triton_spec(spec)
                print(f"OK    triton  {spec[0]:45s} sm_90 cubin {size} B in {time.perf_counter() - t0:.2f}s")
            except Exception as exc:  # noqa: BLE001
                failures += 1
                print(f"FAIL  triton  {spec[0]:45s} {type(exc).__name__}: {str(exc).strip()[:2000]}")

    if args.only in (None, "cuda"):
        if shutil.which("nvcc") is None:
            print(f"SKIP  cuda    {CUDA_SOURCE.name}  nvcc not on PATH")
            if not args.allow_missing_nvcc:
                failures += 1
        else:
            with tempfile.TemporaryDirectory() as tmp:
                for arch in CUDA_ARCHS:
                    t0 = time.perf_counter()
                    try:
                        size = compile_cuda_source(CUDA_SOURCE, arch, Path(tmp))
                        print(f"OK    cuda    {CUDA_SOURCE.name + ' ' + arch:45s} cubin {size} B in "
                              f"{time.perf_counter() - t0:.2f}s")
                    except Exception as exc:  # noqa: BLE001
                        failures += 1
                        print(f"FAIL  cuda    {CUDA_SOURCE.name + ' ' + arch:45s} {exc}")

    print(f"{'FAILED' if failures else 'PASSED'}: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
