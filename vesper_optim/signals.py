"""Training signals that drive Velvet's adaptive scales, and the rules that turn them into scales.

Velvet scales the learning rate by ``s_e`` (entropy scale) and beta1 by ``s_p`` (perplexity
scale), each exactly once (UPSTREAM_SPEC §3.3; §3.6 lists the upstream paths that applied them
twice). Every constant of those rules is a field of :class:`VelvetRules`::

    h    = normalized_entropy                         (entropy_signal "logits": the logits' mean entropy / ln V)
         | min(loss, ln V) / ln V                     (entropy_signal "loss")
    s_e  = clamp(h / entropy_target, *entropy_bounds)
    s_p  = clamp(perplexity_target / max(exp(min(loss, max_log_perplexity)), 1), *perplexity_bounds)
    lr_e = combine(lr · m, s_e)                       (lr_combine "multiply": lr * m * s_e)
    β1_e = clamp(β1 * s_p, *beta1_range)
    m    = clamp(m · exp(hypergradient_rate · cos(g_t, u_{t-1})), *hypergradient_bounds)   (m_0 = 1)

``m`` is the hypergradient LR multiplier (the multiplicative, normalised form of hypergradient
descent, Baydin et al. 2018): ``u_{t-1}`` is the previous update (θ_{t-1} − θ_t, weight decay
included) and ``g_t`` this step's clipped gradient, over all parameters at once. Still moving
downhill along the last update (cosine > 0) raises the LR; an overshoot (cosine < 0) lowers it.
``hypergradient_rate`` 0 turns it off (m = 1).

A non-finite loss (or entropy) gives 1.0 for the scale it drives. Named presets live in
:data:`VELVET_RULES`: ``upstream`` is the original Python optimizer's rules exactly, the Rust
ones are there for comparison, and ``default`` is what Velvet uses unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from vesper_core.errors import ConfigError
from vesper_core.kernels.cross_entropy import MAX_LOG_PERPLEXITY, normalized_entropy  # noqa: F401 (re-exported)
from vesper_core.registry import Registry

ENTROPY_SIGNALS = ("loss", "logits")

#: How the entropy scale combines with the scheduled learning rate: ``combine(lr, s_e) -> lr_e``.
LR_COMBINES: dict[str, Callable[[float, float], float]] = {
    "multiply": lambda lr, scale: lr * scale,
}

#: exp() of more than this overflows float64; a log-perplexity cap above it would make s_p NaN-prone.
_MAX_EXP_ARG = 709.0


def to_float(value: float | torch.Tensor, what: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ConfigError(f"{what} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().item())
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None


# -- validation (field -> label, so OptimConfig can name its flags instead) -------------------------


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _pair(value: Any, label: str, need: str) -> tuple[float, float]:
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ConfigError(f"{label} must be two numbers (lo, hi), got {value!r}") from None
    if not (_is_number(lo) and _is_number(hi)):
        raise ConfigError(f"{label} must be two numbers (lo, hi), got {value!r}")
    lo, hi = float(lo), float(hi)
    ok = {
        "scale": 0.0 < lo <= hi and math.isfinite(hi),
        "beta": 0.0 <= lo <= hi < 1.0,
    }[need]
    if not ok:
        example = "(0.7, 1.3)" if need == "scale" else "(0.5, 0.999)"
        rule = "0 < lo <= hi" if need == "scale" else "0 <= lo <= hi < 1"
        raise ConfigError(f"{label} must satisfy {rule}, e.g. {example}; got {value!r}")
    return lo, hi


def check_bounds(bounds: Any, label: str = "scale bounds") -> tuple[float, float]:
    """Validate ``(lo, hi)`` scale bounds; returns them as a tuple of floats."""
    return _pair(bounds, label, "scale")


def validate_rule_field(name: str, value: Any, label: str | None = None) -> Any:
    """The normalised value of one :class:`VelvetRules` field; ConfigError naming ``label``."""
    label = label or name
    if name == "entropy_signal":
        if value not in ENTROPY_SIGNALS:
            raise ConfigError(f"{label} must be one of {', '.join(ENTROPY_SIGNALS)}, got {value!r}")
        return value
    if name == "lr_combine":
        if value not in LR_COMBINES:
            raise ConfigError(f"{label} must be one of {', '.join(LR_COMBINES)}, got {value!r}")
        return value
    if name in ("entropy_bounds", "perplexity_bounds", "hypergradient_bounds"):
        return _pair(value, label, "scale")
    if name == "hypergradient_rate":
        if not (_is_number(value) and 0.0 <= float(value) <= 1.0):
            raise ConfigError(f"{label} must be a number in [0, 1] (0 = off), got {value!r}")
        return float(value)
    if name == "beta1_range":
        return _pair(value, label, "beta")
    if name in ("entropy_target", "perplexity_target"):
        if not (_is_number(value) and 0.0 < float(value) and math.isfinite(float(value))):
            raise ConfigError(f"{label} must be a finite number > 0, got {value!r}")
        return float(value)
    if name == "max_log_perplexity":
        if not (_is_number(value) and 0.0 < float(value) <= _MAX_EXP_ARG):
            raise ConfigError(f"{label} must be a number in (0, {_MAX_EXP_ARG:g}] (exp() must stay finite), "
                              f"got {value!r}")
        return float(value)
    raise ConfigError(f"unknown Velvet rule {name!r}; valid: {', '.join(RULE_FIELDS)}")


# -- the rules ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VelvetRules:
    """Every constant of Velvet's adaptive rules (see the module docstring for the formulas).

    No field has a default: start from a preset, ``VelvetRules.preset("default")``, and change
    fields with ``.replace(entropy_target=0.6)``. Validated on creation (ConfigError).
    """

    entropy_signal: str
    """What drives s_e: "loss" (min(loss, ln V) / ln V) or "logits" (their mean normalised entropy)."""
    entropy_target: float
    """Normalised entropy at which s_e = 1."""
    entropy_bounds: tuple[float, float]
    """Clamp (lo, hi) of s_e, the learning-rate scale."""
    perplexity_target: float
    """Perplexity at which s_p = 1."""
    perplexity_bounds: tuple[float, float]
    """Clamp (lo, hi) of s_p, the beta1 scale."""
    beta1_range: tuple[float, float]
    """Clamp (lo, hi) of the perplexity-guided beta1 (beta1 * s_p)."""
    max_log_perplexity: float
    """Cap on the loss inside exp(): keeps the perplexity finite."""
    lr_combine: str
    """How s_e combines with the scheduled LR: "multiply" (lr_e = lr * s_e)."""
    hypergradient_rate: float = 0.0
    """kappa of the hypergradient LR multiplier m (0 = off): m <- m * exp(kappa * cos(g_t, u_{t-1}))."""
    hypergradient_bounds: tuple[float, float] = (0.25, 4.0)
    """Clamp (lo, hi) of the hypergradient multiplier m."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, validate_rule_field(f.name, getattr(self, f.name)))

    # -- construction / serialisation -----------------------------------------------------------
    @staticmethod
    def preset(name: str) -> "VelvetRules":
        """A named preset from :data:`VELVET_RULES` (unknown names list the choices)."""
        return VELVET_RULES.get(name)

    def replace(self, **changes: Any) -> "VelvetRules":
        unknown = sorted(set(changes) - set(RULE_FIELDS))
        if unknown:
            raise ConfigError(f"unknown Velvet rule(s) {unknown}; valid: {', '.join(RULE_FIELDS)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-friendly dict (pairs become lists)."""
        return {f: (list(v) if isinstance(v, tuple) else v) for f, v in
                ((f, getattr(self, f)) for f in RULE_FIELDS)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: "str | VelvetRules | None" = None) -> "VelvetRules":
        """Inverse of :meth:`to_dict`. With ``base`` (a preset name or rules), missing keys come from it."""
        unknown = sorted(set(data) - set(RULE_FIELDS))
        if unknown:
            raise ConfigError(f"unknown Velvet rule(s) {unknown}; valid: {', '.join(RULE_FIELDS)}")
        if base is None:
            missing = [f for f in RULE_FIELDS if f not in data]
            if missing:
                raise ConfigError(f"Velvet rules miss {missing}; give every field or a base preset")
            return cls(**data)
        start = VelvetRules.preset(base) if isinstance(base, str) else base
        return start.replace(**data)

    # -- the rules themselves ---------------------------------------------------------------------
    def entropy_scale(self, loss: float | torch.Tensor, *, vocab_size: int | None = None,
                      normalized_entropy: float | torch.Tensor | None = None) -> float:
        """``s_e``: normalised entropy / entropy_target, clamped to entropy_bounds.

        With ``normalized_entropy`` (mean entropy of the logits / ln V, in [0, 1]) that value is
        used; otherwise the loss stands in for it: ``min(loss, ln V) / ln V``. Non-finite: 1.0.
        """
        loss_f = to_float(loss, "loss")
        if not math.isfinite(loss_f):
            return 1.0
        if normalized_entropy is not None:
            h = to_float(normalized_entropy, "normalized_entropy")
            if not math.isfinite(h):
                return 1.0
        else:
            if vocab_size is None:
                raise ConfigError(
                    "the entropy scale needs vocab_size (or normalized_entropy); pass vocab_size=... to "
                    "Velvet/set_signals or turn entropy_adaptive off"
                )
            if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
                raise ConfigError(f"Invalid vocab_size: {vocab_size!r} (need an int >= 2)")
            log_v = math.log(vocab_size)
            h = min(loss_f, log_v) / log_v
        lo, hi = self.entropy_bounds
        return min(max(h / self.entropy_target, lo), hi)

    def perplexity_scale(self, loss: float | torch.Tensor) -> float:
        """``s_p = perplexity_target / max(exp(min(loss, cap)), 1)`` clamped; non-finite loss: 1.0."""
        loss_f = to_float(loss, "loss")
        if not math.isfinite(loss_f):
            return 1.0
        perplexity = max(math.exp(min(loss_f, self.max_log_perplexity)), 1.0)
        lo, hi = self.perplexity_bounds
        return min(max(self.perplexity_target / perplexity, lo), hi)

    def effective_lr(self, lr: float, entropy_scale: float) -> float:
        return LR_COMBINES[self.lr_combine](lr, entropy_scale)

    def effective_beta1(self, beta1: float, ppl_scale: float) -> float:
        lo, hi = self.beta1_range
        return min(max(beta1 * ppl_scale, lo), hi)

    def beta1_span(self, beta1: float, perplexity_guided: bool) -> tuple[float, float]:
        """Every beta1 a step can apply, as (lo, hi): what a kernel backend must be able to run.

        s_p ranges over perplexity_bounds, plus the neutral 1.0 (first step, non-finite loss).
        """
        if not perplexity_guided:
            return beta1, beta1
        lo, hi = self.perplexity_bounds
        return self.effective_beta1(beta1, min(lo, 1.0)), self.effective_beta1(beta1, max(hi, 1.0))


RULE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(VelvetRules))

#: Named rule sets; third-party packages add theirs through the ``vesper.velvet_rules`` entry points.
VELVET_RULES: Registry[VelvetRules] = Registry("Velvet rules preset", "vesper.velvet_rules")

#: The upstream Python optimizer (UPSTREAM_SPEC §3.3, row "Py set_loss_metrics"), exactly.
UPSTREAM = VelvetRules(
    entropy_signal="loss", entropy_target=0.5, entropy_bounds=(0.7, 1.3), perplexity_target=40.0,
    perplexity_bounds=(0.7, 1.3), beta1_range=(0.5, 0.999), max_log_perplexity=MAX_LOG_PERPLEXITY, lr_combine="multiply",
)
VELVET_RULES.register("upstream", UPSTREAM)
# Rust/Candle `vesper train` (§3.3 row 2): wider clamps. Its s_p has no cap on the loss, but with
# the 0.5 floor the cap never changes a value (40 / e^20 << 0.5).
VELVET_RULES.register("upstream_rust", UPSTREAM.replace(entropy_bounds=(0.5, 2.0), perplexity_bounds=(0.5, 2.0)))
# Rust `vesper benchmark` (§3.3 row 4): the same clamps, the entropy of the actual logits.
VELVET_RULES.register("upstream_rust_benchmark", VELVET_RULES.get("upstream_rust").replace(entropy_signal="logits"))

#: The hypergradient LR multiplier alone (kappa 0.05, m in [1/4, 4]), the entropy and perplexity rules
#: neutral (both scales clamped to 1: beta1 stays at its setting). Chosen by the rule study (README
#: "Velvet's rules, studied"): the upstream perplexity rule drives beta1 to 0.999 at low perplexity and
#: loses ~0.7 nats; the entropy rule alone ties AdamW at its best LR but raises the LR when a too-high LR
#: makes training unstable; the hypergradient multiplier ties AdamW at its best LR and loses less when
#: the LR is too low.
HYPERGRADIENT = UPSTREAM.replace(entropy_bounds=(1.0, 1.0), perplexity_bounds=(1.0, 1.0), hypergradient_rate=0.05)
VELVET_RULES.register("hypergradient", HYPERGRADIENT)

#: What Velvet uses unless told otherwise. Change the rules here (one line); the tests pin
#: ``upstream``, not this.
DEFAULT = HYPERGRADIENT
VELVET_RULES.register("default", DEFAULT)


def resolve_rules(rules: "VelvetRules | str | Mapping[str, Any] | None") -> VelvetRules:
    """Rules from an instance, a preset name, a mapping of changes to ``default``, or None (default)."""
    if rules is None:
        return VELVET_RULES.get("default")
    if isinstance(rules, VelvetRules):
        return rules
    if isinstance(rules, str):
        return VELVET_RULES.get(rules)
    if isinstance(rules, Mapping):
        return VelvetRules.from_dict(rules, base="default")
    raise ConfigError(f"Invalid rules: {rules!r} (expected VelvetRules, a preset name or a mapping)")


# -- module-level shortcuts (the default rules unless given) ----------------------------------------


def entropy_scale(
    loss: float | torch.Tensor,
    *,
    vocab_size: int | None = None,
    normalized_entropy: float | torch.Tensor | None = None,
    bounds: tuple[float, float] | None = None,
    rules: VelvetRules | str | None = None,
) -> float:
    """``s_e`` under ``rules`` (default preset); ``bounds`` overrides its entropy_bounds."""
    r = resolve_rules(UPSTREAM if rules is None else rules)
    if bounds is not None:
        r = r.replace(entropy_bounds=check_bounds(bounds, "scale_bounds"))
    return r.entropy_scale(loss, vocab_size=vocab_size, normalized_entropy=normalized_entropy)


def perplexity_scale(loss: float | torch.Tensor, bounds: tuple[float, float] | None = None, *,
                     rules: VelvetRules | str | None = None) -> float:
    """``s_p`` under ``rules`` (default preset); ``bounds`` overrides its perplexity_bounds."""
    r = resolve_rules(UPSTREAM if rules is None else rules)
    if bounds is not None:
        r = r.replace(perplexity_bounds=check_bounds(bounds, "scale_bounds"))
    return r.perplexity_scale(loss)
