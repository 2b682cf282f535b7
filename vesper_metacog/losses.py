"""The meta head's training loss (upstream defined none).

``loss = BCE(confidence) + BCE(termination) + mean over error types of BCE(error_e)``, each a plain
(unweighted) binary cross-entropy with logits averaged over the real positions (``targets.mask``), in
float32. The training loop adds ``MetacogConfig.loss_weight * loss`` to the LM loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vesper_core.errors import ConfigError
from vesper_metacog.head import MetaOutput
from vesper_metacog.targets import ERROR_TYPES, MetaTargets


def metacog_loss(meta: MetaOutput, targets: MetaTargets) -> tuple[Tensor, dict[str, Tensor]]:
    """(scalar loss, parts); parts are detached scalar tensors, so logging them needs no sync now.

    Parts: ``confidence``, ``termination``, ``errors`` (mean of the types), ``error_<type>`` for each
    named type, and ``total``.
    """
    if meta.error_logits.shape != targets.errors.shape:
        raise ConfigError(
            f"metacog loss: head gives error logits {tuple(meta.error_logits.shape)} but targets are "
            f"{tuple(targets.errors.shape)}; num_error_types must match the targets"
        )
    weight = targets.mask.float()  # (B, T)
    denom = weight.sum().clamp(min=1.0)

    def bce(logit: Tensor, target: Tensor) -> Tensor:  # (B, T) each -> scalar
        raw = F.binary_cross_entropy_with_logits(logit.float(), target.float(), reduction="none")
        return (raw * weight).sum() / denom

    confidence = bce(meta.confidence_logit, targets.confidence)
    termination = bce(meta.termination_logit, targets.termination)
    per_type = [bce(meta.error_logits[..., e], targets.errors[..., e])
                for e in range(meta.error_logits.shape[-1])]
    errors = torch.stack(per_type).mean()
    total = confidence + termination + errors

    parts = {"confidence": confidence.detach(), "termination": termination.detach(),
             "errors": errors.detach()}
    for e, value in enumerate(per_type):
        name = ERROR_TYPES[e] if e < len(ERROR_TYPES) else str(e)
        parts[f"error_{name}"] = value.detach()
    parts["total"] = total.detach()
    return total, parts
