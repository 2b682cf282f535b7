"""Velvet: AdamW with an entropy-adaptive LR, perplexity-guided momentum and sparse-aware updates.

Shaped like ``torch/optim/adamw.py``: hyper-parameters validated in the constructor, all mutable
state (per-parameter step, running beta1 product, moments; per-group adaptive scales, the rules
that make them and the last gradient norm) in ``state`` / ``param_groups``, so ``state_dict()``
round-trips exactly and never depends on the backend. The math lives in
:mod:`vesper_optim.functional`, the rules in :mod:`vesper_optim.signals`.

Velvet implements :class:`vesper_optim.protocol.SignalAware` and ``ReportsMetrics``. In a trainer::

    loss.backward()
    norm = clip_grad_norm_(params, max_norm)                  # vesper_optim.clipping: one clipping path
    opt.set_signals(loss, normalized_entropy=h, vocab_size=V, grad_norm=norm)   # h if "entropy" in
    opt.step(); opt.zero_grad()                               #   opt.training_signals()

Standalone, ``opt.set_signals(loss)`` then ``opt.step()`` clips by itself (or call
``opt.clip_grad_norm_()`` first).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor
from torch.optim import Optimizer

from vesper_core.errors import ConfigError, VesperError
from vesper_optim import functional as F
from vesper_optim.clipping import clip_grad_norm_
from vesper_optim.signals import RULE_FIELDS, VelvetRules, check_bounds, resolve_rules, to_float

# Group keys added after the upstream optimizer; back-filled by __setstate__ for older states.
# (The rule fields, VelvetRules' names, are back-filled from the ``default`` preset.)
_GROUP_DEFAULTS: dict[str, Any] = {
    "sparse": False,  # mark a group whose zeros are structural (used only with sparse_aware)
    "entropy_scale": 1.0,  # s_e applied at the next step (1.0 when entropy_adaptive is off)
    "ppl_scale": 1.0,  # s_p applied at the next step (1.0 when perplexity_guided is off)
    "grad_norm": 0.0,  # pre-clip global gradient norm of the last step
    "hypergradient_scale": 1.0,  # m, the hypergradient LR multiplier the next step applies (rules)
}
_STATE_DTYPES = {"step": torch.float32, "beta1_prod": torch.float64,
                 "exp_avg": torch.float32, "exp_avg_sq": torch.float32, "prev_update": torch.float32}
_HOST_STATE = ("step", "beta1_prod")  # kept on the CPU like torch's non-capturable `step`
_LEGACY_BOUNDS = "scale_bounds"  # one clamp for both scales, before the rules had two


def _check_number(value: Any, what: str, ok: Callable[[float], bool], need: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(float(value)):
        raise ConfigError(f"Invalid {what}: {value!r} ({need})")


def check_hyperparameters(
    *, lr: float, betas: tuple[float, float], eps: float, weight_decay: float, max_grad_norm: float,
    entropy_adaptive: bool = True, perplexity_guided: bool = True, sparse_aware: bool = False,
) -> None:
    """Raise ConfigError (a ValueError) naming the first invalid hyper-parameter."""
    finite_nonneg = lambda x: math.isfinite(x) and x >= 0  # noqa: E731
    _check_number(lr, "learning rate", finite_nonneg, "lr must be a finite float >= 0")
    _check_number(eps, "epsilon value", finite_nonneg, "eps must be a finite float >= 0")
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise ConfigError(f"Invalid betas: {betas!r} (expected two floats (beta1, beta2))") from None
    for index, beta in enumerate((beta1, beta2)):
        _check_number(beta, f"beta parameter at index {index}", lambda b: 0.0 <= b < 1.0,
                      "betas must be in [0, 1)")
    _check_number(weight_decay, "weight_decay value", finite_nonneg, "weight_decay must be >= 0")
    _check_number(max_grad_norm, "max_grad_norm value", finite_nonneg,
                  "max_grad_norm must be >= 0; 0 disables clipping")
    for name, flag in (("entropy_adaptive", entropy_adaptive), ("perplexity_guided", perplexity_guided),
                       ("sparse_aware", sparse_aware)):
        if not isinstance(flag, bool):
            raise ConfigError(f"Invalid {name} value: {flag!r} (must be True or False)")


def _check_vocab_size(vocab_size: int | None) -> None:
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int)
                                   or vocab_size < 2):
        raise ConfigError(f"Invalid vocab_size: {vocab_size!r} (need an int >= 2, or None)")


def group_rules(group: Mapping[str, Any]) -> VelvetRules:
    """The VelvetRules a param group carries (its rule fields), validated (cached by value)."""
    values = tuple(group[f] for f in RULE_FIELDS)
    try:
        return _rules_from_values(values)
    except TypeError:  # unhashable: a list put into a group by hand
        return VelvetRules(**dict(zip(RULE_FIELDS, values)))


@functools.lru_cache(maxsize=64)
def _rules_from_values(values: tuple) -> VelvetRules:
    return VelvetRules(**dict(zip(RULE_FIELDS, values)))


class Velvet(Optimizer):
    """AdamW-family optimizer; see UPSTREAM_SPEC §3 and vesper_optim.functional for the math.

    Args:
        params: parameters or param groups. A group may set ``sparse=True``: with
            ``sparse_aware=True`` its elements with ``|p| < 1e-9`` are never touched. A group may
            also override any rule field (``{"params": ..., "entropy_target": 0.6}``).
        lr, betas, eps, weight_decay: as in AdamW (decoupled decay, scaled by ``s_e`` too).
        max_grad_norm: global L2 clip applied by :meth:`step` unless the caller clipped and passed
            the norm to :meth:`set_signals` (0 disables).
        entropy_adaptive: combine the LR with ``s_e`` from :meth:`set_signals`.
        perplexity_guided: use ``clamp(beta1 * s_p, *beta1_range)`` as beta1.
        sparse_aware: honour ``sparse=True`` groups.
        rules: the adaptive rules (signals.VelvetRules): an instance, a preset name
            (``signals.VELVET_RULES``: default, upstream, ...), a mapping of changes to ``default``,
            or None (``default``). Stored per group, field by field, and in ``state_dict()``.
        scale_bounds: shortcut that sets both ``entropy_bounds`` and ``perplexity_bounds``.
        vocab_size: default vocabulary size for :meth:`set_signals`.
        backend: "auto", "reference", "foreach", "fused", "triton", "cupy" or a registered kernel.
            Checked here against every group's devices, dtypes and settings (functional.select_backend).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-3,
        max_grad_norm: float = 1.0,
        entropy_adaptive: bool = True,
        perplexity_guided: bool = True,
        sparse_aware: bool = False,
        *,
        rules: VelvetRules | str | Mapping[str, Any] | None = None,
        scale_bounds: tuple[float, float] | None = None,
        vocab_size: int | None = None,
        backend: str = "auto",
    ) -> None:
        check_hyperparameters(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
            entropy_adaptive=entropy_adaptive, perplexity_guided=perplexity_guided, sparse_aware=sparse_aware,
        )
        resolved = resolve_rules(rules)
        if scale_bounds is not None:
            bounds = check_bounds(scale_bounds, "scale_bounds")
            resolved = resolved.replace(entropy_bounds=bounds, perplexity_bounds=bounds)
        _check_vocab_size(vocab_size)
        F.check_backend_name(backend)
        self.backend = backend  # not in param_groups: checkpoints never depend on the backend
        self._requested_backend = F.requested_backend(backend)  # the env var is read once, here
        self._group_backends: dict[int, tuple[tuple, F.VelvetBackend]] = {}
        self.vocab_size = vocab_size
        self._grad_norm: Tensor | float | None = None  # norm of the current grads (clip or set_signals)
        self._grad_key: tuple | None = None  # which grads that norm belongs to (see _grads_key)
        self._hypergradient_key: tuple | None = None  # the grads the hypergradient multiplier last saw
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
            entropy_adaptive=entropy_adaptive, perplexity_guided=perplexity_guided,
            sparse_aware=sparse_aware, **_GROUP_DEFAULTS, **_rule_values(resolved),
        )
        super().__init__(params, defaults)

    # -- groups and state ----------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **param_group}
        check_hyperparameters(**{k: merged[k] for k in (
            "lr", "betas", "eps", "weight_decay", "max_grad_norm", "entropy_adaptive",
            "perplexity_guided", "sparse_aware")})
        if not isinstance(merged["sparse"], bool):
            raise ConfigError(f"Invalid sparse value: {merged['sparse']!r} (must be True or False)")
        rules = group_rules(merged)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["betas"] = tuple(group["betas"])
        group.update(_rule_values(rules))
        for p in group["params"]:
            if torch.is_complex(p) or not p.is_floating_point():
                raise ConfigError(f"Velvet needs real floating-point parameters, got {p.dtype}")
        self._backend_for(len(self.param_groups) - 1, group)  # an impossible backend fails here

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("backend", "auto")
        self.__dict__.setdefault("_requested_backend", F.requested_backend(self.backend))
        self.__dict__.setdefault("vocab_size", None)
        self.__dict__.setdefault("_grad_norm", None)
        self.__dict__.setdefault("_hypergradient_key", None)
        self.__dict__.setdefault("_grad_key", None)
        self._group_backends = {}
        default = _rule_values(resolve_rules(None))
        for group in self.param_groups:
            legacy = group.pop(_LEGACY_BOUNDS, None)
            if legacy is not None:  # saved before the two scales had their own bounds
                group.setdefault("entropy_bounds", legacy)
                group.setdefault("perplexity_bounds", legacy)
            for key, value in {**_GROUP_DEFAULTS, **default}.items():
                group.setdefault(key, value)
            group["betas"] = tuple(group["betas"])
            group.update(_rule_values(group_rules(group)))  # JSON lists back to tuples, validated
            for p in group["params"]:
                self._backfill_state(self.state.get(p), group["betas"][0])

    @staticmethod
    def _backfill_state(state: dict[str, Any] | None, beta1: float) -> None:
        """Upgrade states saved without tensor steps or without ``beta1_prod``."""
        if not state or "step" not in state:
            return
        if not torch.is_tensor(state["step"]):
            state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32)
        if "beta1_prod" not in state:  # best estimate: beta1 was constant
            state["beta1_prod"] = torch.tensor(beta1 ** float(state["step"]), dtype=torch.float64)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loader, then restore our state dtypes (it casts moments to the param dtype).

        The loaded groups' settings (betas, rules) are checked against the backend at once.
        """
        saved = state_dict["state"]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for param_id, p in zip(saved_ids, params):
            for key, value in saved.get(param_id, {}).items():
                if key in _STATE_DTYPES and torch.is_tensor(value):
                    device = torch.device("cpu") if key in _HOST_STATE else p.device
                    self.state[p][key] = value.detach().to(device=device, dtype=_STATE_DTYPES[key],
                                                            copy=True)
        for index, group in enumerate(self.param_groups):
            self._backend_for(index, group)

    def _backend_for(self, index: int, group: dict[str, Any]) -> F.VelvetBackend:
        """The kernel backend of group ``index``, selected again only when its settings changed."""
        rules = group_rules(group)
        beta1, beta2 = group["betas"]
        beta1_range = rules.beta1_span(beta1, group["perplexity_guided"])
        sparse = bool(group["sparse_aware"] and group["sparse"])
        placements = frozenset((p.device, p.dtype) for p in group["params"])
        key = (placements, beta1_range, beta2, sparse)
        cached = self._group_backends.get(index)
        if cached is not None and cached[0] == key:
            return cached[1]
        impl = F.select_backend(self._requested_backend, placements, beta1_range=beta1_range, beta2=beta2,
                                sparse=sparse, where=f"param group {index}",
                                from_env=self.backend == "auto" and self._requested_backend != "auto")
        self._group_backends[index] = (key, impl)
        return impl

    def backends(self) -> list[str]:
        """The kernel backend each param group runs on (selected at construction)."""
        return [self._backend_for(i, g).name for i, g in enumerate(self.param_groups)]

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        params, grads, exp_avgs, exp_avg_sqs, steps, beta1_prods = [], [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise VesperError("Velvet does not support sparse gradients; use dense embeddings")
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["beta1_prod"] = torch.tensor(1.0, dtype=torch.float64)
                state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
            beta1_prods.append(state["beta1_prod"])
        return params, grads, exp_avgs, exp_avg_sqs, steps, beta1_prods

    # -- the SignalAware protocol ---------------------------------------------------------
    def training_signals(self) -> frozenset[str]:
        """``{"loss"}``, plus ``"entropy"`` when a group's entropy scale follows the logits."""
        wants_entropy = any(g["entropy_adaptive"] and g["entropy_signal"] == "logits" for g in self.param_groups)
        return frozenset({"loss", "entropy"}) if wants_entropy else frozenset({"loss"})

    def set_signals(
        self,
        loss: float | Tensor,
        *,
        normalized_entropy: float | Tensor | None = None,
        vocab_size: int | None = None,
        grad_norm: Tensor | float | None = None,
    ) -> None:
        """This step's signals: the loss (and the logits' normalised entropy), before :meth:`step`.

        Stores ``entropy_scale`` / ``ppl_scale`` in every group (1.0 where the feature is off), so
        the logged value is the applied value and both are checkpointed. A normalised entropy, when
        given, drives the entropy scale; a group with ``entropy_signal="logits"`` requires one.
        ``grad_norm``: the pre-clip norm of gradients the caller has already clipped (with
        ``vesper_optim.clipping.clip_grad_norm_``): step() then does not clip again and records it.
        It belongs to the current gradients only (zero_grad forgets it; new gradients void it).
        A tensor loss or entropy costs one host sync each; a tensor norm is read after the update.
        """
        _check_vocab_size(vocab_size)
        vocab = vocab_size if vocab_size is not None else self.vocab_size
        loss_f = to_float(loss, "loss")
        entropy = None if normalized_entropy is None else to_float(normalized_entropy, "normalized_entropy")
        for index, group in enumerate(self.param_groups):
            rules = group_rules(group)
            if group["entropy_adaptive"]:
                if entropy is None and rules.entropy_signal == "logits":
                    raise ConfigError(
                        f"param group {index} uses entropy_signal='logits' but set_signals got no "
                        f"normalized_entropy; pass the logits' normalised entropy (vesper_optim.signals."
                        f"normalized_entropy) or use entropy_signal='loss'"
                    )
                group["entropy_scale"] = rules.entropy_scale(loss_f, vocab_size=vocab, normalized_entropy=entropy)
            else:
                group["entropy_scale"] = 1.0
            group["ppl_scale"] = rules.perplexity_scale(loss_f) if group["perplexity_guided"] else 1.0
        hypergradient = self._hypergradient_groups()
        if hypergradient and any(p.grad is not None for g in hypergradient for p in g["params"]):
            self._update_hypergradient_scale(hypergradient)
        if grad_norm is not None:
            if not (torch.is_tensor(grad_norm) or isinstance(grad_norm, (int, float))) or isinstance(grad_norm, bool):
                raise ConfigError(f"grad_norm must be a number or a 0-dim tensor, got {grad_norm!r}")
            self._remember_norm(grad_norm)

    # -- clipping ------------------------------------------------------------------------
    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _grads_key(self) -> tuple:
        """Identity and in-place version of every gradient: a norm is valid only for these grads."""
        return tuple((id(p.grad), p.grad._version) for p in self._params() if p.grad is not None)

    def _remember_norm(self, norm: Tensor | float) -> None:
        self._grad_norm = norm
        self._grad_key = self._grads_key()

    def _forget_norm(self) -> None:
        self._grad_norm = None
        self._grad_key = None

    def _max_grad_norm(self) -> float:
        values = {float(g["max_grad_norm"]) for g in self.param_groups}
        if len(values) > 1:
            raise ConfigError(
                f"max_grad_norm differs between param groups ({sorted(values)}); clipping is global, "
                f"set one value for all groups"
            )
        return values.pop()

    def clip_grad_norm_(self) -> Tensor:
        """Clip all gradients by their global L2 norm; returns the pre-clip norm (0-dim f32).

        For standalone use; step() then does not clip again (for these gradients).
        """
        norm = clip_grad_norm_(self._params(), self._max_grad_norm())
        self._remember_norm(norm)
        return norm

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's zero_grad; also forgets the gradient norm (it belonged to those gradients)."""
        self._forget_norm()
        super().zero_grad(set_to_none=set_to_none)

    # -- the ReportsMetrics protocol / logging ---------------------------------------------
    def effective_lr(self, group_index: int = 0) -> float:
        """The LR the next step applies in this group: the scheduled lr combined with s_e."""
        g = self.param_groups[group_index]
        return F.effective_lr(g["lr"] * g["hypergradient_scale"], g["entropy_scale"], g["entropy_adaptive"],
                              group_rules(g))

    def effective_beta1(self, group_index: int = 0) -> float:
        """The beta1 the next step applies in this group."""
        g = self.param_groups[group_index]
        return F.effective_beta1(g["betas"][0], g["ppl_scale"], g["perplexity_guided"], group_rules(g))

    def step_metrics(self) -> dict[str, float]:
        """Group 0's applied values: after set_signals, those the next step() applies."""
        g = self.param_groups[0]
        return {"lr_effective": self.effective_lr(0), "entropy_scale": float(g["entropy_scale"]),
                "ppl_scale": float(g["ppl_scale"]), "beta1_effective": self.effective_beta1(0),
                "hypergradient_scale": float(g["hypergradient_scale"])}

    # -- the hypergradient LR multiplier (rules.hypergradient_rate > 0) ----------------------
    def _hypergradient_groups(self) -> list[dict[str, Any]]:
        return [g for g in self.param_groups if g["hypergradient_rate"] > 0]

    def _update_hypergradient_scale(self, groups: list[dict[str, Any]]) -> None:
        """m <- clamp(m * exp(kappa * cos(g_t, u_{t-1}))) for these groups (one cosine over all of their
        parameters), once per set of gradients: set_signals does it (so the logged m is the applied one),
        else step."""
        key = self._grads_key()
        if self._hypergradient_key == key:
            return
        self._hypergradient_key = key
        previous = [(p.grad, self.state[p]["prev_update"]) for g in groups for p in g["params"]
                    if p.grad is not None and "prev_update" in self.state[p]]
        if not previous:
            return
        cos = _cosine([g for g, _ in previous], [u for _, u in previous])
        for g in groups:
            lo, hi = g["hypergradient_bounds"]
            g["hypergradient_scale"] = min(max(g["hypergradient_scale"] * math.exp(g["hypergradient_rate"] * cos),
                                               lo), hi)

    # -- step ----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update. Clips first unless the current gradients' norm is known (see set_signals)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._grad_norm is not None and self._grad_key != self._grads_key():
            self._forget_norm()  # stale: a skipped step (GradScaler) or gradients changed since
        if self._grad_norm is None and self._max_grad_norm() > 0:
            self.clip_grad_norm_()
        hypergradient = self._hypergradient_groups()
        before = None
        if hypergradient:
            self._update_hypergradient_scale(hypergradient)
            before = [(p, p.detach().float().clone()) for g in hypergradient for p in g["params"] if p.grad is not None]
        for index, group in enumerate(self.param_groups):
            params, grads, exp_avgs, exp_avg_sqs, steps, beta1_prods = self._init_group(group)
            if not params:
                continue
            beta1, beta2 = group["betas"]
            F.velvet(
                params, grads, exp_avgs, exp_avg_sqs, steps, beta1_prods,
                lr=group["lr"] * group["hypergradient_scale"], beta1=beta1, beta2=beta2, eps=group["eps"],
                weight_decay=group["weight_decay"], entropy_scale=group["entropy_scale"],
                ppl_scale=group["ppl_scale"], entropy_adaptive=group["entropy_adaptive"],
                perplexity_guided=group["perplexity_guided"],
                sparse_mask_enabled=group["sparse_aware"] and group["sparse"], rules=group_rules(group),
                backend=self._backend_for(index, group),
            )
        if before is not None:  # u_t = theta_{t-1} - theta_t, for the next step's cosine
            for p, old in before:
                self.state[p]["prev_update"] = old.sub_(p.detach().float())
            self._hypergradient_key = None
        # read the norm after the updates are queued: the one host sync of the step
        grad_norm = 0.0 if self._grad_norm is None else float(self._grad_norm)
        self._forget_norm()  # consumed: the next step's gradients need their own
        for group in self.param_groups:
            group["grad_norm"] = grad_norm
        return loss


def _cosine(grads: list[Tensor], updates: list[Tensor]) -> float:
    """cos(g, u) over all tensors at once (f32 accumulation); 0 when either is zero.

    Elementwise products and full reductions only, so sharded (FSDP2 DTensor) parameters reduce across
    ranks like plain tensors."""
    dot = gg = uu = 0.0
    for g, u in zip(grads, updates):
        g = g.float()
        dot = dot + _full((g * u).sum())
        gg = gg + _full((g * g).sum())
        uu = uu + _full((u * u).sum())
    denom = math.sqrt(float(gg) * float(uu))
    return float(dot) / denom if denom > 0 and math.isfinite(denom) else 0.0


def _full(value: Tensor) -> Tensor:
    """A reduced DTensor as a plain tensor (every rank gets the global value); plain tensors unchanged."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def _rule_values(rules: VelvetRules) -> dict[str, Any]:
    """The rule fields as group values (pairs as tuples, like ``betas``)."""
    return {f: getattr(rules, f) for f in RULE_FIELDS}
