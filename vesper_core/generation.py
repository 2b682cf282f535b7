"""Autoregressive generation: a preallocated KV cache and the samplers of UPSTREAM_SPEC §7.2.

Per new token the last-position logits (float32) go through, in order: repetition penalty over every
id seen so far (prompt included), then greedy argmax when ``temperature <= 0``, else temperature,
top-k, top-p, softmax and a multinomial draw. Unlike upstream, EOS and ``stop_ids`` also stop greedy
decoding (bug 29).

Context: at most ``max_position_embeddings`` tokens. Without the cache each step sees the last window
of the running sequence. With the cache the prompt's last window is prefilled; when the cache is full
it is rebuilt from the last half window, so the following steps are cached again.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import Tensor, nn

from vesper_core.errors import ConfigError


class LayerKVCache:
    """One layer's keys and values, preallocated (B, NH, max_len, D)."""

    def __init__(self, k: Tensor, v: Tensor):
        self.k = k
        self.v = v

    def update(self, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
        end = start + k.shape[2]
        self.k[:, :, start:end] = k.to(self.k.dtype)
        self.v[:, :, start:end] = v.to(self.v.dtype)
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, NH, end, D)


class KVCache:
    """Keys/values of every layer plus ``length``, the number of positions already filled."""

    def __init__(self, num_layers: int, batch: int, num_heads: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        if max_len <= 0:
            raise ConfigError(f"KV cache max_len must be positive, got {max_len}")
        shape = (batch, num_heads, max_len, head_dim)
        self.layers = [
            LayerKVCache(torch.zeros(shape, device=device, dtype=dtype),
                         torch.zeros(shape, device=device, dtype=dtype))
            for _ in range(num_layers)
        ]
        self.batch = batch
        self.max_len = max_len
        self.length = 0

    @classmethod
    def for_model(cls, model: nn.Module, batch: int, max_len: int) -> "KVCache":
        """A cache shaped for ``model`` (a VesperLM), on its device and in its parameter dtype."""
        config = model.config
        weight = model.embeddings.weight
        return cls(config.num_layers, batch, config.num_heads, max_len, config.head_dim,
                   device=weight.device, dtype=weight.dtype)

    def check_room(self, batch: int, num_new: int) -> None:
        if batch != self.batch:
            raise ConfigError(f"KV cache was built for batch {self.batch}, got batch {batch}")
        if self.length + num_new > self.max_len:
            raise ConfigError(
                f"KV cache full: {self.length} + {num_new} positions exceed max_len {self.max_len}; "
                f"reset() it or build a larger cache"
            )

    def advance(self, num_new: int) -> None:
        self.length += num_new

    def reset(self) -> None:
        self.length = 0


# -- logit processing (each step of §7.2 on its own) ----------------------------------------
def apply_repetition_penalty(logits: Tensor, token_ids: Tensor, penalty: float) -> Tensor:
    """Penalise every id in ``token_ids`` (B, T) once: positive logits / penalty, others * penalty."""
    if penalty == 1.0:
        return logits
    seen = logits.gather(-1, token_ids)  # (B, T)
    penalised = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, token_ids, penalised)  # (B, V)


def apply_top_k(logits: Tensor, k: int) -> Tensor:
    """Set logits strictly below the k-th largest to -inf (ties with it are kept); k <= 0 is a no-op."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    threshold = logits.topk(k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < threshold, float("-inf"))


def apply_top_p(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest highest-probability prefix whose mass reaches ``p`` (never empty)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly better tokens
    sorted_logits = sorted_logits.masked_fill(mass_before >= p, float("-inf"))
    return sorted_logits.scatter(-1, order, sorted_logits)  # back to vocabulary order


def sample_next(logits: Tensor, *, temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> Tensor:
    """One id per row of ``logits`` (B, V): greedy when temperature <= 0, else filtered sampling."""
    if temperature <= 0:
        return logits.argmax(dim=-1)  # (B,)
    logits = apply_top_p(apply_top_k(logits / temperature, top_k), top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


# -- the decoding loop -------------------------------------------------------------------------
@torch.no_grad()
def generate_tokens(model: nn.Module, input_ids: Tensor, *, max_new_tokens: int,
                    temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0,
                    repetition_penalty: float = 1.0, eos_token_id: int | None = None,
                    stop_ids: Iterable[int] | None = None, use_cache: bool = True,
                    generator: torch.Generator | None = None) -> Iterator[Tensor]:
    """Yield each new token id tensor (B,) as soon as it is chosen.

    ``input_ids`` is (B, T) or (T,). A row stops at ``eos_token_id`` or any of ``stop_ids`` (the
    stop id is yielded); a stopped row repeats that id while other rows continue, and the loop ends
    when every row has stopped. ``generator`` must live on the model's device.
    """
    _check_sampling(max_new_tokens, top_k, top_p, repetition_penalty)
    ids = _as_batch(input_ids).to(model.embeddings.weight.device)  # (B, T)
    window = model.config.max_position_embeddings
    stop = _stop_tensor(eos_token_id, stop_ids, ids.device)
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    cache = None
    if use_cache and max_new_tokens > 0:
        capacity = min(window, ids.shape[1] + max_new_tokens)
        cache = KVCache.for_model(model, batch=ids.shape[0], max_len=capacity)
    num_uncached = min(ids.shape[1], window)  # trailing ids the cache has not seen

    for _ in range(max_new_tokens):
        if cache is None:
            logits = model(ids[:, -window:]).logits[:, -1]  # (B, V)
        else:
            if cache.length + num_uncached > cache.max_len:
                cache.reset()
                num_uncached = max(cache.max_len // 2, 1)
            logits = model(ids[:, -num_uncached:], kv_cache=cache).logits[:, -1]  # (B, V)
        logits = apply_repetition_penalty(logits.float(), ids, repetition_penalty)
        next_ids = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                               generator=generator)  # (B,)
        if stop is not None:
            next_ids = torch.where(finished, ids[:, -1], next_ids)
            finished |= torch.isin(next_ids, stop)
        ids = torch.cat([ids, next_ids[:, None]], dim=1)
        num_uncached = 1
        yield next_ids
        if stop is not None and bool(finished.all()):
            return


def generate(model: nn.Module, input_ids: Tensor, **kwargs) -> Tensor:
    """Prompt plus generated ids, same rank as ``input_ids``; keywords as ``generate_tokens``.

    The one-call Python API (``max_new_tokens`` is required)::

        from vesper_core.generation import generate
        ids = torch.tensor(tokenizer.encode("Once upon a time"))        # (T,) or (B, T)
        out = generate(model.eval(), ids, max_new_tokens=50, temperature=0.8, top_k=50, top_p=0.95,
                       repetition_penalty=1.1, eos_token_id=tokenizer.eos_id,
                       generator=torch.Generator().manual_seed(0))
        text = tokenizer.decode(out.tolist())

    Rows that stop early (EOS / ``stop_ids``) repeat their stop id until every row has stopped.
    """
    prompt = _as_batch(input_ids).to(model.embeddings.weight.device)  # (B, T)
    new = [t[:, None] for t in generate_tokens(model, prompt, **kwargs)]
    out = torch.cat([prompt, *new], dim=1)  # (B, T + new)
    return out if input_ids.dim() == 2 else out[0]


def _as_batch(input_ids: Tensor) -> Tensor:
    if input_ids.dim() == 1:
        input_ids = input_ids[None, :]
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ConfigError(
            f"generation needs a non-empty prompt of shape (batch, T) or (T,), got "
            f"{tuple(input_ids.shape)}"
        )
    return input_ids.long()


def _stop_tensor(eos_token_id: int | None, stop_ids: Iterable[int] | None,
                 device: torch.device) -> Tensor | None:
    ids = set(stop_ids or ())
    if eos_token_id is not None:
        ids.add(eos_token_id)
    return torch.tensor(sorted(ids), dtype=torch.long, device=device) if ids else None


def _check_sampling(max_new_tokens: int, top_k: int, top_p: float, penalty: float) -> None:
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if top_k < 0:
        raise ConfigError(f"top_k must be >= 0 (0 disables it), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    if penalty <= 0:
        raise ConfigError(f"repetition_penalty must be > 0 (1 disables it), got {penalty}")
