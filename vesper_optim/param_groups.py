"""Split a model's parameters into weight-decay / no-decay (/ sparse) groups, nanoGPT style."""

from __future__ import annotations

import difflib
from typing import Any, Iterable

import torch

from vesper_core.errors import ConfigError


def build_param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    *,
    sparse_param_names: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Param groups for an optimizer: ``[decay, no_decay, sparse]``, empty groups left out.

    * decay: trainable tensors with ``dim >= 2`` (matrices and embeddings), ``weight_decay``;
    * no_decay: the rest (biases, norm weights), weight decay 0;
    * sparse: the names in ``sparse_param_names``, ``weight_decay`` and ``sparse=True``
      (with ``Velvet(sparse_aware=True)`` their zero entries stay zero).

    Tied parameters appear once (under their first name). Each group carries ``param_names``.
    """
    sparse = set(sparse_param_names)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # deduplicates ties
    names = {n for n, _ in named}
    unknown = sorted(sparse - names)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(names), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"sparse_param_names has unknown parameter(s) {unknown}{hint}")
    groups = {
        "decay": {"params": [], "param_names": [], "weight_decay": weight_decay},
        "no_decay": {"params": [], "param_names": [], "weight_decay": 0.0},
        "sparse": {"params": [], "param_names": [], "weight_decay": weight_decay, "sparse": True},
    }
    for name, p in named:
        key = "sparse" if name in sparse else "decay" if p.dim() >= 2 else "no_decay"
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return [g for g in groups.values() if g["params"]]
