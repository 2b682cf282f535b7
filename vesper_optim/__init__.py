"""Velvet optimizer and its pieces: functional core, signals and rules, protocol, clipping, schedules,
groups, registry."""

from vesper_optim.clipping import clip_grad_norm_
from vesper_optim.config import OptimConfig
from vesper_optim.functional import BACKENDS, GPU_VERIFIED, VelvetBackend, resolve_backend, select_backend, velvet
from vesper_optim.param_groups import build_param_groups
from vesper_optim.protocol import SIGNALS, ReportsMetrics, SignalAware
from vesper_optim.registry import OPTIMIZERS, build_optimizer
from vesper_optim.schedules import lr_at, set_lr
from vesper_optim.signals import VELVET_RULES, VelvetRules, entropy_scale, normalized_entropy, perplexity_scale
from vesper_optim.velvet import Velvet

__all__ = [
    "BACKENDS", "GPU_VERIFIED", "OPTIMIZERS", "OptimConfig", "ReportsMetrics", "SIGNALS", "SignalAware",
    "VELVET_RULES", "Velvet", "VelvetBackend", "VelvetRules", "build_optimizer", "build_param_groups",
    "clip_grad_norm_", "entropy_scale", "lr_at", "normalized_entropy", "perplexity_scale", "resolve_backend",
    "select_backend", "set_lr", "velvet",
]
