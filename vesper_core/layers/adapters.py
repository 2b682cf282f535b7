"""Fine-tuning adapters wrapped around a pretrained VesperLM's linears: LoRA and FlyLoRA.

Both add a rank-R update to a frozen projection, ``y = base(x) + (alpha / R) * B(A(x))``, with
``A: (R, in)`` and ``B: (out, R)``; ``B`` starts at zero, so an adapted model starts equal to its base.

* **LoRA** (Hu et al. 2021): ``A`` (Kaiming-uniform, like ``nn.Linear``) and ``B`` both train.
* **FlyLoRA** (Zou et al. 2025, and the seed documents' ``W_eff = W_base + (A x B) * mask`` with a
  frozen base): ``A`` is a *frozen sparse random projection*: every row holds exactly
  ``round((1 - sparsity) * in)`` non-zeros drawn from N(0, 1/R^2) (the paper's scale), the rest are
  exact zeros; the documented sparsity is 75 % zeros (``sparsity=0.75``). The sparse mask lives in
  ``A`` (the factor that is random and frozen), not in the product. Only ``B`` trains, so an adapter
  trains ``R * out`` numbers instead of LoRA's ``R * (in + out)``.
  Optional rank-wise routing (the paper's implicit rank-wise mixture of experts): with ``top_k > 0``
  each token keeps only the ``top_k`` largest-magnitude components of ``A x``, so only those columns
  of ``B`` receive its gradient. Routed adapters depend on the input and cannot be folded into plain
  weights; the paper's load-balancing bias is not built.

Targets are module names (shell patterns): a pattern without a dot matches the last name component
(``q_proj`` matches ``layers.3.attention.q_proj``), one with dots the whole name. Any ``nn.Linear``
or the architecture's ``FlyLoRALinear`` (its effective map is adapted as a whole) can be wrapped,
except the LM head, which is tied to the embedding and used directly by the chunked loss.

Parameter names: the wrapper keeps the original module as ``<name>.base`` and adds ``<name>.lora_A``
and ``<name>.lora_B``; :func:`base_state_dict` and :func:`merged_state_dict` give back the plain
VesperLM names.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import Tensor, nn

from vesper_core.errors import CheckpointError, ConfigError
from vesper_core.layers.flylora import FlyLoRALinear

if TYPE_CHECKING:
    from vesper_core.model import VesperLM

ADAPTER_KINDS = ("lora", "flylora")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_TIED_HEAD = "lm_head"


@dataclass(frozen=True)
class AdapterConfig:
    """What adapters a model carries; stored with every adapter checkpoint."""

    kind: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    sparsity: float = 0.75  # FlyLoRA: share of exact zeros in each row of the frozen A
    top_k: int = 0  # FlyLoRA: ranks kept per token (0 = all, mergeable)
    seed: int = 0  # the random A's (FlyLoRA) / initial A's (LoRA) generator

    def __post_init__(self) -> None:
        targets = self.targets.split(",") if isinstance(self.targets, str) else self.targets
        object.__setattr__(self, "targets", tuple(t.strip() for t in targets if t and t.strip()))
        if self.kind not in ADAPTER_KINDS:
            raise ConfigError(f"unknown adapter kind {self.kind!r}; choices: {', '.join(ADAPTER_KINDS)}")
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ConfigError(f"--lora-rank must be a positive whole number, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ConfigError(f"--lora-alpha must be a positive number, got {self.alpha!r}")
        if not self.targets:
            raise ConfigError("--lora-targets is empty; name the projections to adapt, e.g. q_proj,v_proj")
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"--flylora-sparsity must be in [0, 1) (the share of zeros in A), got {self.sparsity}")
        if self.top_k < 0 or self.top_k >= self.rank:
            raise ConfigError(f"--flylora-top-k must be 0 (all ranks) or below --lora-rank {self.rank}, "
                              f"got {self.top_k}")
        if self.top_k and self.kind != "flylora":
            raise ConfigError("--flylora-top-k routes FlyLoRA ranks; use it with --finetune flylora")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AdapterConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "targets" in known:
            known["targets"] = tuple(known["targets"])
        return cls(**known)


class AdapterLinear(nn.Module):
    """``base(x) + scaling * B(A(x))`` around a frozen linear (see the module docstring)."""

    def __init__(self, base: nn.Module, config: AdapterConfig, generator: torch.Generator):
        super().__init__()
        self.base = base
        self.kind = config.kind
        self.rank = config.rank
        self.scaling = config.scaling
        self.top_k = config.top_k
        in_f, out_f = base.in_features, base.out_features
        self.in_features, self.out_features = in_f, out_f
        weight = _target_linear(base).weight
        factory = dict(device=weight.device, dtype=torch.float32)
        a = torch.empty(config.rank, in_f, **factory)
        if config.kind == "lora":
            bound = 1.0 / math.sqrt(in_f)  # nn.Linear's default (kaiming_uniform with a = sqrt(5))
            a.copy_(torch.rand(a.shape, generator=generator) * 2 * bound - bound)
            self.lora_A = nn.Parameter(a)
        else:
            a.copy_(sparse_random_projection(config.rank, in_f, config.sparsity, generator))
            self.register_buffer("lora_A", a)  # frozen: saved, never trained
        self.lora_B = nn.Parameter(torch.zeros(out_f, config.rank, **factory))

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        y = self.base(x)
        h = x.to(self.lora_A.dtype) @ self.lora_A.t()  # (..., R)
        if self.top_k:
            keep = h.abs().topk(self.top_k, dim=-1).indices  # (..., k) the token's active ranks
            h = torch.zeros_like(h).scatter(-1, keep, h.gather(-1, keep))
        return y + (self.scaling * (h @ self.lora_B.t())).to(y.dtype)  # (..., out)

    def delta_weight(self) -> Tensor:
        """``scaling * B @ A`` (out, in): the change this adapter makes to the base weight."""
        if self.top_k:
            raise ConfigError(f"a FlyLoRA adapter with top-k routing (--flylora-top-k {self.top_k}) depends on "
                              f"the input and cannot be folded into plain weights; train with --flylora-top-k 0 "
                              f"to merge, or use the adapter checkpoint as it is")
        return self.scaling * (self.lora_B.detach().double() @ self.lora_A.detach().double())

    def extra_repr(self) -> str:
        routed = f", top_k={self.top_k}" if self.top_k else ""
        return (f"kind={self.kind}, in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, scaling={self.scaling}{routed}")


def sparse_random_projection(rank: int, in_features: int, sparsity: float, generator: torch.Generator) -> Tensor:
    """(rank, in) with exactly ``round((1 - sparsity) * in)`` (at least 1) N(0, 1/rank^2) entries per row."""
    keep = max(1, round((1.0 - sparsity) * in_features))
    values = torch.randn(rank, keep, generator=generator) / rank  # (R, p)
    columns = torch.rand(rank, in_features, generator=generator).argsort(dim=-1)[:, :keep]  # (R, p) distinct
    return torch.zeros(rank, in_features).scatter_(1, columns, values)


@dataclass
class AdapterReport:
    """What :func:`attach_adapters` did."""

    config: AdapterConfig
    wrapped: list[str]
    num_trainable: int
    num_total: int

    @property
    def share(self) -> float:
        return self.num_trainable / max(self.num_total, 1)

    def summary(self) -> str:
        return (f"{self.config.kind} adapters (rank {self.config.rank}, alpha {self.config.alpha:g}) on "
                f"{len(self.wrapped)} projections: {self.num_trainable:,} trainable of {self.num_total:,} "
                f"parameters ({100 * self.share:.2f}%)")


def _target_linear(module: nn.Module) -> nn.Linear:
    """The plain linear whose weight an adapter's update folds into."""
    return module.base if isinstance(module, FlyLoRALinear) else module


def adaptable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Module name -> linear that adapters may wrap (not the tied LM head, not a FlyLoRALinear's parts)."""
    found: dict[str, nn.Module] = {}
    inside_flylora: set[str] = set()
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside_flylora):
            continue
        if isinstance(module, FlyLoRALinear):
            inside_flylora.add(name)
            found[name] = module
        elif isinstance(module, nn.Linear) and name != _TIED_HEAD:
            found[name] = module
    return found


def _matches(name: str, pattern: str) -> bool:
    if "." not in pattern:
        return fnmatch.fnmatchcase(name.rsplit(".", 1)[-1], pattern)
    return fnmatch.fnmatchcase(name, pattern)


def wrapped_modules(model: nn.Module) -> dict[str, AdapterLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLinear)}


def attach_adapters(model: "VesperLM", config: AdapterConfig) -> AdapterReport:
    """Freeze every weight of ``model`` and wrap the targeted linears with trainable adapters (in place)."""
    if wrapped_modules(model):
        raise ConfigError("this model already carries adapters; merge them first (vesper merge)")
    candidates = adaptable_modules(model)
    chosen: list[str] = []
    for pattern in config.targets:
        hits = [n for n in candidates if _matches(n, pattern)]
        if not hits:
            examples = sorted({n.rsplit(".", 1)[-1] for n in candidates})
            raise ConfigError(f"--lora-targets {pattern!r} matches no adaptable projection; names end in "
                              f"{', '.join(examples)} (the tied lm_head cannot be adapted)")
        chosen += [n for n in hits if n not in chosen]
    chosen.sort(key=list(candidates).index)  # model order: the same generator draws for the same targets
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(config.seed)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, AdapterLinear(candidates[name], config, generator))
    model.adapter_config = config
    return adapter_report(model)


def adapter_report(model: nn.Module) -> AdapterReport:
    """Which projections of ``model`` carry adapters and how many parameters train (tied weights once)."""
    config = adapter_config_of(model)
    if config is None:
        raise ConfigError("the model carries no adapters")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return AdapterReport(config=config, wrapped=list(wrapped_modules(model)), num_trainable=trainable,
                         num_total=total)


def adapter_config_of(model: nn.Module) -> AdapterConfig | None:
    return getattr(model, "adapter_config", None) if wrapped_modules(model) else None


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapters' tensors (``<name>.lora_A``, ``<name>.lora_B``), detached and contiguous."""
    state = {}
    for name, module in wrapped_modules(model).items():
        state[f"{name}.lora_A"] = module.lora_A.detach().contiguous()
        state[f"{name}.lora_B"] = module.lora_B.detach().contiguous()
    return state


def load_adapter_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load :func:`adapter_state_dict` tensors into a model that carries the same adapters."""
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(part for part in (
            f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
            f"shape mismatch {wrong[:3]}" if wrong else "") if part)
        raise CheckpointError(f"adapter weights do not match the adapters attached to the model: {detail}")
    with torch.no_grad():
        for name, module in wrapped_modules(model).items():
            module.lora_A.copy_(state[f"{name}.lora_A"])
            module.lora_B.copy_(state[f"{name}.lora_B"])


def base_state_dict(model: "VesperLM") -> dict[str, Tensor]:
    """The frozen base weights under the plain VesperLM names (without the tied head), adapters left out."""
    from vesper_core.model import TIED_KEY

    wrapped = wrapped_modules(model)
    state = {}
    for key, value in model.state_dict().items():
        if key == TIED_KEY:
            continue
        owner = next((n for n in wrapped if key.startswith(n + ".")), None)
        if owner is not None:
            rest = key[len(owner) + 1:]
            if not rest.startswith("base."):
                continue  # lora_A / lora_B
            key = f"{owner}.{rest[len('base.'):]}"
        state[key] = value.detach()
    return state


def merged_state_dict(model: "VesperLM") -> dict[str, Tensor]:
    """Plain VesperLM weights with every adapter folded in (``W + scaling * B @ A``, in float64)."""
    state = base_state_dict(model)
    for name, module in wrapped_modules(model).items():
        key = f"{name}.base.weight" if isinstance(module.base, FlyLoRALinear) else f"{name}.weight"
        weight = state[key]
        state[key] = (weight.double() + module.delta_weight().to(weight.device)).to(weight.dtype)
    return state


def merge_adapters(model: "VesperLM") -> "VesperLM":
    """A new plain VesperLM whose weights fold the adapters in; ``model`` itself is left as it is."""
    from vesper_core.model import VesperLM

    state = merged_state_dict(model)
    device = next(iter(state.values())).device
    merged = VesperLM(model.config)
    merged.load_exported_state_dict(state)
    return merged.to(device)
