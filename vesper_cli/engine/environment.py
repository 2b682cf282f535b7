"""What this machine offers Vesper: devices, library versions, kernel backends and optional extras."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
from dataclasses import asdict, dataclass, field

import torch

from vesper_core import __version__

#: (import name, distribution name, the extra that installs it)
OPTIONAL_PACKAGES = (
    ("triton", "triton", "cuda"), ("cupy", "cupy-cuda12x", "cuda"), ("datasets", "datasets", "hf"),
    ("matplotlib", "matplotlib", "plot"), ("wandb", "wandb", "wandb"), ("tensorboard", "tensorboard", "tensorboard"),
    ("lion_pytorch", "lion-pytorch", "lion"), ("schedulefree", "schedulefree", "schedulefree"),
    ("jinja2", "jinja2", "chat"), ("lm_eval", "lm-eval", "lm-eval"), ("torchao", "torchao", "quant"),
    ("transformers", "transformers", "export"), ("onnx", "onnx", "export"), ("onnxscript", "onnxscript", "export"),
    ("onnxruntime", "onnxruntime", "export"), ("fastapi", "fastapi", "serve"), ("uvicorn", "uvicorn", "serve"),
    ("plotly", "plotly", "studio"), ("playwright", "playwright", "dev"),
)


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    total_memory_mib: int
    free_memory_mib: int | None
    capability: str


@dataclass(frozen=True)
class PackageInfo:
    module: str
    distribution: str
    extra: str
    version: str | None  # None: not installed

    @property
    def usable(self) -> bool:
        return self.version is not None


@dataclass(frozen=True)
class BackendInfo:
    name: str
    reason: str | None  # None: runs here


@dataclass
class Environment:
    vesper: str
    python: str
    platform: str
    torch: str
    cuda_runtime: str | None
    cuda_available: bool
    num_threads: int
    devices: list[DeviceInfo] = field(default_factory=list)
    packages: list[PackageInfo] = field(default_factory=list)
    backends: list[BackendInfo] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _version(module: str, distribution: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "installed"


def _devices() -> list[DeviceInfo]:
    out = []
    if not torch.cuda.is_available():
        return out
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        try:
            free, _ = torch.cuda.mem_get_info(i)
            free_mib = free >> 20
        except RuntimeError:
            free_mib = None
        out.append(DeviceInfo(i, props.name, props.total_memory >> 20, free_mib, f"{props.major}.{props.minor}"))
    return out


def _backends() -> list[BackendInfo]:
    from vesper_optim.functional import BACKENDS, describe_backend

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = []
    for name in BACKENDS.names():
        try:
            reason = describe_backend(name).unavailable_reason(device)
        except Exception as exc:  # a plugin's probe failing is itself the answer
            reason = f"probe failed: {exc}"
        out.append(BackendInfo(name, reason))
    return out


def collect_environment() -> Environment:
    return Environment(
        vesper=__version__, python=sys.version.split()[0], platform=f"{platform.system()} {platform.machine()}",
        torch=torch.__version__, cuda_runtime=torch.version.cuda, cuda_available=torch.cuda.is_available(),
        num_threads=torch.get_num_threads(), devices=_devices(),
        packages=[PackageInfo(m, d, e, _version(m, d)) for m, d, e in OPTIONAL_PACKAGES], backends=_backends())
