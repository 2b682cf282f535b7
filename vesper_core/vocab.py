"""Growing a model's vocabulary when tokens (a chat template's special tokens) are added to its tokenizer.

The embedding (tied to the LM head) gets one row per new id, initialised to the mean of the existing
rows: the new token starts as an "average" token, so its logit is near the others' and its input
does not push the residual stream anywhere unusual. Nothing else in the model depends on the vocabulary.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from vesper_core.errors import CheckpointError

EMBEDDING_KEY = "embeddings.weight"
GROWTH_KEY = "vocab_growth"  # checkpoint metadata: {"from": V_old, "to": V_new, "tokens": [...], "init": ...}
INIT_RULE = "mean of the existing rows"


def grow_vocabulary(state_dict: Mapping[str, torch.Tensor], new_vocab_size: int
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``state_dict`` with the embedding grown to ``new_vocab_size`` rows, and a record of the change (None if none)."""
    state = dict(state_dict)
    weight = state.get(EMBEDDING_KEY)
    if weight is None:
        raise CheckpointError(f"the checkpoint has no {EMBEDDING_KEY}; cannot grow its vocabulary")
    old = weight.shape[0]
    if new_vocab_size < old:
        raise CheckpointError(f"cannot shrink the vocabulary from {old} to {new_vocab_size} tokens")
    if new_vocab_size == old:
        return state, None
    mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)  # (1, H)
    state[EMBEDDING_KEY] = torch.cat([weight, mean.expand(new_vocab_size - old, -1)], dim=0)  # (V_new, H)
    state.pop("lm_head.weight", None)  # tied: the model re-ties it to the grown embedding
    return state, {"from": old, "to": new_vocab_size, "init": INIT_RULE}
