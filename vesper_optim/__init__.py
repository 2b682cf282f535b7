"""Velvet optimizer and its pieces: functional core, signals, clipping, schedules, groups, registry."""

from vesper_optim.clipping import clip_grad_norm_
from vesper_optim.config import OptimConfig
from vesper_optim.functional import BACKENDS, VelvetBackend, resolve_backend, velvet
from vesper_optim.param_groups import build_param_groups
from vesper_optim.registry import OPTIMIZERS, build_optimizer
from vesper_optim.schedules import lr_at, set_lr
from vesper_optim.signals import entropy_scale, normalized_entropy, perplexity_scale
from vesper_optim.velvet import Velvet

__all__ = [
    "BACKENDS", "OPTIMIZERS", "OptimConfig", "Velvet", "VelvetBackend", "build_optimizer",
    "build_param_groups", "clip_grad_norm_", "entropy_scale", "lr_at", "normalized_entropy",
    "perplexity_scale", "resolve_backend", "set_lr", "velvet",
]
