"""Optimizer registry: name -> factory ``(params, cfg) -> torch.optim.Optimizer``."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import torch
from torch.optim import Optimizer

from vesper_core.registry import Registry
from vesper_optim.config import OptimConfig
from vesper_optim.velvet import Velvet

OptimizerFactory = Callable[..., Optimizer]  # (params, cfg, **context) -> Optimizer
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer", "vesper.optimizers")

_FUSED_DEVICES = ("cpu", "cuda")


def _tensors(params: list[Any]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for item in params:
        out.extend(item["params"] if isinstance(item, dict) else [item])
    return out


@OPTIMIZERS.register("velvet")
def make_velvet(params: Iterable[Any], cfg: OptimConfig, *, vocab_size: int | None = None) -> Velvet:
    """Velvet with every setting of ``cfg``, its rules included (``cfg.rules()``: preset + overrides)."""
    return Velvet(
        params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, entropy_adaptive=cfg.entropy_adaptive,
        perplexity_guided=cfg.perplexity_guided, sparse_aware=cfg.sparse_aware,
        rules=cfg.rules(), vocab_size=vocab_size, backend=cfg.backend,
    )


@OPTIMIZERS.register("adamw")
def make_adamw(params: Iterable[Any], cfg: OptimConfig) -> torch.optim.AdamW:
    """torch AdamW, fused when every parameter allows it, else foreach (no clipping inside)."""
    params = list(params)
    tensors = _tensors(params)
    fused = bool(tensors) and all(
        t.device.type in _FUSED_DEVICES and t.is_floating_point() for t in tensors
    )
    kind = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, **kind)


def _accepted(factory: Callable[..., Any], context: dict[str, Any]) -> dict[str, Any]:
    """The context keywords ``factory`` takes (plugins may take just ``(params, cfg)``)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return context
    names = {p.name for p in parameters}
    return {k: v for k, v in context.items() if k in names}


def build_optimizer(params_or_groups: Iterable[Any], cfg: OptimConfig, *,
                    vocab_size: int | None = None) -> Optimizer:
    """Build ``cfg.name`` over parameters or param groups (e.g. from build_param_groups).

    ``vocab_size`` is passed to factories that take it (Velvet's entropy scale needs it).
    """
    factory = OPTIMIZERS.get(cfg.name)
    return factory(params_or_groups, cfg, **_accepted(factory, {"vocab_size": vocab_size}))


import vesper_optim.baselines  # noqa: F401  (registers muon, lion, schedulefree_adamw)
