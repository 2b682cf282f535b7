"""Split a model's parameters into weight-decay / no-decay (/ sparse) groups, nanoGPT style."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Iterable

import torch

from vesper_core.errors import ConfigError


def build_param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    *,
    sparse_param_names: Iterable[str] = (),
    sparse_patterns: Iterable[str] = (),
    name_prefix: str = "",
) -> list[dict[str, Any]]:
    """Param groups for an optimizer: ``[decay, no_decay, sparse]``, empty groups left out.

    * decay: trainable tensors with ``dim >= 2`` (matrices and embeddings), ``weight_decay``;
    * no_decay: the rest (biases, norm weights), weight decay 0;
    * sparse: the names in ``sparse_param_names`` or matching one of the shell-style
      ``sparse_patterns`` (``layers.*.ffn.*.lora_*``), ``weight_decay`` and ``sparse=True``
      (with ``Velvet(sparse_aware=True)`` their zero entries stay zero).

    Tied parameters appear once (under their first name). Each group carries ``param_names``,
    prefixed with ``name_prefix`` (e.g. ``metacog.`` for a head trained beside the model).
    """
    sparse = set(sparse_param_names)
    patterns = [p for p in sparse_patterns if p]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # deduplicates ties
    names = {n for n, _ in named}
    unknown = sorted(sparse - names)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(names), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"sparse_param_names has unknown parameter(s) {unknown}{hint}")
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ConfigError(f"--sparse-params {pattern!r} matches no trainable parameter; names look like "
                              f"{', '.join(sorted(names)[:3])}")
        sparse |= {n for n in names if fnmatch.fnmatchcase(n, pattern)}
    groups = {
        "decay": {"params": [], "param_names": [], "weight_decay": weight_decay},
        "no_decay": {"params": [], "param_names": [], "weight_decay": 0.0},
        "sparse": {"params": [], "param_names": [], "weight_decay": weight_decay, "sparse": True},
    }
    for name, p in named:
        key = "sparse" if name in sparse else "decay" if p.dim() >= 2 else "no_decay"
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name_prefix + name)
    return [g for g in groups.values() if g["params"]]
