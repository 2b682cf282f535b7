"""Mixture of Experts replacing the FFN (UPSTREAM_SPEC §2.8), with upstream bugs 11 and 49 fixed.

Softmax routing in float32, top-k experts per token with weights renormalised over the k picks. Each
token runs only through its own experts: (token, slot) pairs are sorted by expert, every expert sees a
contiguous slice of tokens, and the weighted outputs are index-added back into a float32 buffer (then
cast to the input dtype, so a bf16 model without autocast works: bug 49). The routing weights stay in
the autograd graph, so the router learns from the LM loss too (bug 11). No capacity limit, no token
dropping.

Auxiliary load-balancing loss (Switch Transformer): ``N * sum_i f_i * P_i`` with ``f_i`` the share of
the T*K routing slots given to expert i and ``P_i`` its mean routing probability; 1.0 when uniform.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vesper_core.config import ModelConfig
from vesper_core.layers.ffn import GLUFeedForward


class MoEFeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_experts = config.moe_num_experts
        self.top_k = config.moe_top_k
        self.router = nn.Linear(config.hidden_size, self.num_experts)
        self.experts = nn.ModuleList(GLUFeedForward(config) for _ in range(self.num_experts))

    def route(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Probabilities (T, N) in f32, chosen experts (T, K), their renormalised weights (T, K)."""
        probs = self.router(tokens).float().softmax(dim=-1)  # (T, N)
        top_probs, top_experts = probs.topk(self.top_k, dim=-1)  # (T, K)
        weights = top_probs / top_probs.sum(dim=-1, keepdim=True)  # (T, K)
        return probs, top_experts, weights

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        H = x.shape[-1]
        tokens = x.reshape(-1, H)  # (T, H)
        probs, top_experts, weights = self.route(tokens)

        flat_experts = top_experts.reshape(-1)  # (T*K,)
        order = flat_experts.argsort(stable=True)  # slots grouped by expert
        slot_token = order // self.top_k  # (T*K,) token index of each sorted slot
        slot_weight = weights.reshape(-1)[order]  # (T*K,)
        counts = torch.bincount(flat_experts, minlength=self.num_experts)  # (N,)

        out = tokens.new_zeros(tokens.shape, dtype=torch.float32)  # (T, H)
        per_expert = counts.tolist()  # one host sync: slice sizes
        for expert, token_idx, weight in zip(self.experts, slot_token.split(per_expert),
                                             slot_weight.split(per_expert)):
            if token_idx.numel() == 0:
                continue
            expert_out = expert(tokens[token_idx])  # (n, H)
            out.index_add_(0, token_idx, expert_out.float() * weight[:, None])

        aux = self.load_balancing_loss(probs, counts)
        return out.to(x.dtype).view(x.shape), aux

    def load_balancing_loss(self, probs: Tensor, counts: Tensor) -> Tensor:
        slot_share = counts.float() / counts.sum()  # (N,) f_i, sums to 1
        mean_prob = probs.mean(dim=0)  # (N,) P_i
        return self.num_experts * (slot_share * mean_prob).sum()
