"""The Chinchilla heuristic (UPSTREAM_SPEC §9.1): which model sizes a number of training tokens can feed.

Upstream's AutoScaler takes ``tokens / 20`` as the target parameter count and returns the first deep, narrow
shape within ±10 % of it (or silently ``medium``), unvalidated, with an epoch rule that always asks for at
least 3 epochs. We keep the 20 tokens per parameter rule and upstream's shape rule (heads = hidden / 64,
intermediate = 4 x hidden) on a wider grid (hidden 128..2048 in steps of 64, 2..32 layers, so that small
budgets find a real match), and every suggestion is a validated ``ModelConfig`` at the real vocabulary
(presets and searched shapes), ranked by how close it is to the target, each with the optimizer steps
that feed it 20 tokens per parameter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from vesper_core.config import ModelConfig
from vesper_core.errors import ConfigError
from vesper_core.presets import PRESETS

TOKENS_PER_PARAM = 20
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([kmbt]?)\s*", re.IGNORECASE)
_FACTORS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def parse_token_count(text: str | int, what: str = "--tokens") -> int:
    """``100M``, ``2.5B``, ``50k`` or a bare integer (as upstream's download script); a positive count."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE.fullmatch(str(text))
        if not match:
            raise ConfigError(f"{what} {text!r} is not a token count; write e.g. 100M, 2.5B, 50K or 1000000")
        value = int(float(match.group(1)) * _FACTORS[match.group(2).lower()])
    if value <= 0:
        raise ConfigError(f"{what} must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class ScaleSuggestion:
    name: str  # a preset name or "shape-<layers>x<hidden>"
    source: str  # "preset" or "shape"
    config: ModelConfig
    num_params: int
    tokens_per_param: float  # dataset tokens / parameters (Chinchilla: 20)
    recommended_steps: int  # steps that show the model 20 tokens per parameter (at least one pass)
    epochs: float  # passes over the data those steps make

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "num_params": self.num_params,
                "tokens_per_param": self.tokens_per_param, "recommended_steps": self.recommended_steps,
                "epochs": self.epochs, "config": self.config.to_dict()}


@dataclass(frozen=True)
class ScalePlan:
    dataset_tokens: int
    optimal_params: int
    tokens_per_step: int
    suggestions: list[ScaleSuggestion]
    note: str | None  # set when the data is outside what any candidate can match

    def to_dict(self) -> dict:
        return {"dataset_tokens": self.dataset_tokens, "optimal_params": self.optimal_params,
                "tokens_per_step": self.tokens_per_step, "note": self.note,
                "suggestions": [s.to_dict() for s in self.suggestions]}


def searched_shapes(vocab_size: int) -> list[tuple[str, ModelConfig]]:
    """Hidden 128..2048 step 64, layers 2..32, heads = hidden / 64 (head_dim 64), intermediate 4 x hidden."""
    shapes = []
    for hidden in range(128, 2049, 64):
        heads = hidden // 64
        for layers in range(2, 33):
            config = ModelConfig(vocab_size=vocab_size, hidden_size=hidden, num_layers=layers, num_heads=heads,
                                 intermediate_size=4 * hidden)
            shapes.append((f"shape-{layers}x{hidden}", config))
    return shapes


def _dense_presets(vocab_size: int) -> list[tuple[str, ModelConfig]]:
    out = []
    for name in PRESETS.names():
        config = PRESETS.get(name)()
        if not config.moe_enabled:
            out.append((name, config.replace(vocab_size=vocab_size)))
    return out


def _suggestion(name: str, source: str, config: ModelConfig, tokens: int, tokens_per_step: int) -> ScaleSuggestion:
    params = config.num_params()
    wanted = max(tokens, TOKENS_PER_PARAM * params)
    steps = math.ceil(wanted / tokens_per_step)
    return ScaleSuggestion(name, source, config, params, tokens / params, steps, steps * tokens_per_step / tokens)


def scale_for_tokens(tokens: int, *, vocab_size: int = 32000, batch_size: int = 4, seq_len: int = 512,
                     grad_accum: int = 1, count: int = 3) -> ScalePlan:
    """Up to ``count`` presets and ``count`` searched shapes closest (in log-parameters) to tokens / 20."""
    for what, value in (("tokens", tokens), ("vocab size", vocab_size), ("batch size", batch_size),
                        ("sequence length", seq_len), ("grad accumulation", grad_accum), ("count", count)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"scale: {what} must be a positive integer, got {value!r}")
    target = max(1, tokens // TOKENS_PER_PARAM)
    per_step = batch_size * seq_len * grad_accum

    def distance(item: tuple[str, ModelConfig]) -> float:
        return abs(math.log(item[1].num_params() / target))

    presets = sorted(_dense_presets(vocab_size), key=distance)[:count]
    preset_configs = {c for _, c in _dense_presets(vocab_size)}
    shapes = sorted((s for s in searched_shapes(vocab_size) if s[1] not in preset_configs), key=distance)[:count]
    suggestions = sorted([_suggestion(n, "preset", c, tokens, per_step) for n, c in presets]
                         + [_suggestion(n, "shape", c, tokens, per_step) for n, c in shapes],
                         key=lambda s: abs(math.log(s.num_params / target)))
    smallest = min(c.num_params() for _, c in _dense_presets(vocab_size) + searched_shapes(vocab_size))
    note = None
    if target < smallest:
        note = (f"{tokens:,} tokens call for about {target:,} parameters, fewer than the smallest candidate "
                f"({smallest:,}); every suggestion will repeat the data (see epochs) - more data fits these sizes better")
    return ScalePlan(tokens, target, per_step, suggestions, note)
