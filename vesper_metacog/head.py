"""MetaHead: per-position confidence, error types and termination from the LM's final hidden states.

Same layers and names as upstream (UPSTREAM_SPEC §8) so checkpoint keys read ``metacog.error_proj.*``,
``metacog.error_classifier.*``, ``metacog.confidence_proj.*``, ``metacog.termination_proj.*``. Two
changes: the head returns logits (losses use BCE-with-logits; probabilities are properties), and the
error types are independent sigmoids (multi-label) rather than a softmax. Upstream's softmax had no
"no error" class, so its ``has_errors`` measured only how peaked the classifier was.

Initialisation: weights ~ N(0, 0.02), biases 0, so a fresh head predicts 0.5 everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vesper_core.errors import ConfigError
from vesper_metacog.config import MetacogConfig

INIT_STD = 0.02


@dataclass
class MetaOutput:
    error_logits: Tensor  # (B, T, E)
    confidence_logit: Tensor  # (B, T)
    termination_logit: Tensor  # (B, T)

    @property
    def confidence(self) -> Tensor:
        """P(the LM's top-1 next token is right), (B, T)."""
        return torch.sigmoid(self.confidence_logit)

    @property
    def termination_prob(self) -> Tensor:
        """P(end of document within the target horizon), (B, T)."""
        return torch.sigmoid(self.termination_logit)

    @property
    def error_probs(self) -> Tensor:
        """Independent probability of each error type, (B, T, E)."""
        return torch.sigmoid(self.error_logits)


class MetaHead(nn.Module):
    """Reads final-normed hidden states (B, T, H); see the module docstring."""

    def __init__(self, config: MetacogConfig):
        super().__init__()
        self.config = config
        H = config.hidden_size
        self.detach_input = config.detach_input
        self.error_proj = nn.Linear(H, config.meta_hidden)
        self.activation = nn.GELU()
        self.error_classifier = nn.Linear(config.meta_hidden, config.num_error_types)
        self.confidence_proj = nn.Linear(H, 1)
        self.termination_proj = nn.Linear(H, 1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for layer in (self.error_proj, self.error_classifier, self.confidence_proj,
                      self.termination_proj):
            nn.init.normal_(layer.weight, 0.0, INIT_STD)
            nn.init.zeros_(layer.bias)

    def forward(self, hidden: Tensor) -> MetaOutput:
        if hidden.dim() != 3 or hidden.shape[-1] != self.config.hidden_size:
            raise ConfigError(
                f"meta head expects hidden states (B, T, {self.config.hidden_size}), got "
                f"{tuple(hidden.shape)}; check MetacogConfig.hidden_size against the model"
            )
        if self.detach_input:
            hidden = hidden.detach()
        hidden = hidden.to(self.confidence_proj.weight.dtype)  # (B, T, H)
        error_logits = self.error_classifier(self.activation(self.error_proj(hidden)))  # (B, T, E)
        confidence_logit = self.confidence_proj(hidden).squeeze(-1)  # (B, T)
        termination_logit = self.termination_proj(hidden).squeeze(-1)  # (B, T)
        return MetaOutput(error_logits=error_logits, confidence_logit=confidence_logit,
                          termination_logit=termination_logit)
