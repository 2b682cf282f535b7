"""Velvet: AdamW with an entropy-adaptive LR, perplexity-guided momentum and sparse-aware updates.

Shaped like ``torch/optim/adamw.py``: hyper-parameters validated in the constructor, all mutable
state (per-parameter step, running beta1 product, moments; per-group adaptive scales and the
last gradient norm) in ``state`` / ``param_groups``, so ``state_dict()`` round-trips exactly and
never depends on the backend. The math lives in :mod:`vesper_optim.functional`.

Typical loop::

    loss.backward()
    opt.set_signals(loss, vocab_size=V)   # this step's loss -> scales (applied once)
    norm = opt.clip_grad_norm_()          # optional: step() clips if you don't
    opt.step(); opt.zero_grad()
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

from vesper_core.errors import ConfigError, VesperError
from vesper_optim import functional as F
from vesper_optim.clipping import clip_grad_norm_
from vesper_optim.signals import DEFAULT_BOUNDS, to_float, check_bounds, entropy_scale, perplexity_scale

# Group keys added after the upstream optimizer; back-filled by __setstate__ for older states.
_GROUP_DEFAULTS: dict[str, Any] = {
    "sparse": False,  # mark a group whose zeros are structural (used only with sparse_aware)
    "scale_bounds": DEFAULT_BOUNDS,
    "entropy_scale": 1.0,  # s_e applied at the next step (1.0 when entropy_adaptive is off)
    "ppl_scale": 1.0,  # s_p applied at the next step (1.0 when perplexity_guided is off)
    "grad_norm": 0.0,  # pre-clip global gradient norm of the last step
}
_STATE_DTYPES = {"step": torch.float32, "beta1_prod": torch.float64,
                 "exp_avg": torch.float32, "exp_avg_sq": torch.float32}
_HOST_STATE = ("step", "beta1_prod")  # kept on the CPU like torch's non-capturable `step`


def _check_number(value: Any, what: str, ok: Callable[[float], bool], need: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(float(value)):
        raise ConfigError(f"Invalid {what}: {value!r} ({need})")


def check_hyperparameters(
    *, lr: float, betas: tuple[float, float], eps: float, weight_decay: float, max_grad_norm: float,
    entropy_adaptive: bool = True, perplexity_guided: bool = True, sparse_aware: bool = False,
    scale_bounds: tuple[float, float] = DEFAULT_BOUNDS,
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
    check_bounds(scale_bounds)


def _check_vocab_size(vocab_size: int | None) -> None:
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int)
                                   or vocab_size < 2):
        raise ConfigError(f"Invalid vocab_size: {vocab_size!r} (need an int >= 2, or None)")


class Velvet(Optimizer):
    """AdamW-family optimizer; see UPSTREAM_SPEC §3 and vesper_optim.functional for the math.

    Args:
        params: parameters or param groups. A group may set ``sparse=True``: with
            ``sparse_aware=True`` its elements with ``|p| < 1e-9`` are never touched.
        lr, betas, eps, weight_decay: as in AdamW (decoupled decay, scaled by ``s_e`` too).
        max_grad_norm: global L2 clip applied by :meth:`step` (0 disables).
        entropy_adaptive: multiply the LR by ``s_e`` from :meth:`set_signals`.
        perplexity_guided: use ``clamp(beta1 * s_p, 0.5, 0.999)`` as beta1.
        sparse_aware: honour ``sparse=True`` groups.
        scale_bounds: clamp of both scales.
        vocab_size: default vocabulary size for :meth:`set_signals`.
        backend: "auto", "reference", "foreach" or a registered kernel; see functional.BACKENDS.
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
        scale_bounds: tuple[float, float] = DEFAULT_BOUNDS,
        vocab_size: int | None = None,
        backend: str = "auto",
    ) -> None:
        check_hyperparameters(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
            entropy_adaptive=entropy_adaptive, perplexity_guided=perplexity_guided,
            sparse_aware=sparse_aware, scale_bounds=scale_bounds,
        )
        _check_vocab_size(vocab_size)
        F.check_backend_name(backend)
        self.backend = backend  # not in param_groups: checkpoints never depend on the backend
        self.vocab_size = vocab_size
        self._grad_norm: Tensor | None = None  # set by clip_grad_norm_, consumed by step
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
            entropy_adaptive=entropy_adaptive, perplexity_guided=perplexity_guided,
            sparse_aware=sparse_aware, **_GROUP_DEFAULTS,
        )
        defaults["scale_bounds"] = tuple(scale_bounds)
        super().__init__(params, defaults)

    # -- groups and state ----------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **param_group}
        check_hyperparameters(**{k: merged[k] for k in (
            "lr", "betas", "eps", "weight_decay", "max_grad_norm", "entropy_adaptive",
            "perplexity_guided", "sparse_aware", "scale_bounds")})
        if not isinstance(merged["sparse"], bool):
            raise ConfigError(f"Invalid sparse value: {merged['sparse']!r} (must be True or False)")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["betas"], group["scale_bounds"] = tuple(group["betas"]), tuple(group["scale_bounds"])
        for p in group["params"]:
            if torch.is_complex(p) or not p.is_floating_point():
                raise ConfigError(f"Velvet needs real floating-point parameters, got {p.dtype}")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("backend", "auto")
        self.__dict__.setdefault("vocab_size", None)
        self.__dict__.setdefault("_grad_norm", None)
        for group in self.param_groups:
            for key, value in _GROUP_DEFAULTS.items():
                group.setdefault(key, value)
            group["betas"], group["scale_bounds"] = tuple(group["betas"]), tuple(group["scale_bounds"])
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
        """torch's loader, then restore our state dtypes (it casts moments to the param dtype)."""
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

    # -- signals and clipping ------------------------------------------------------------
    def set_signals(
        self,
        loss: float | Tensor,
        *,
        normalized_entropy: float | Tensor | None = None,
        vocab_size: int | None = None,
    ) -> None:
        """Set this step's scales from its loss (and optionally the logits' normalised entropy).

        Call before :meth:`step`. Stores ``entropy_scale`` / ``ppl_scale`` in every group (1.0 where
        the feature is off), so the logged value is the applied value and both are checkpointed.
        A tensor loss costs one host sync.
        """
        _check_vocab_size(vocab_size)
        vocab = vocab_size if vocab_size is not None else self.vocab_size
        loss_f = to_float(loss, "loss")
        entropy = None if normalized_entropy is None else to_float(normalized_entropy, "normalized_entropy")
        for group in self.param_groups:
            bounds = group["scale_bounds"]
            group["entropy_scale"] = (
                entropy_scale(loss_f, vocab_size=vocab, normalized_entropy=entropy, bounds=bounds)
                if group["entropy_adaptive"] else 1.0
            )
            group["ppl_scale"] = perplexity_scale(loss_f, bounds) if group["perplexity_guided"] else 1.0

    def _max_grad_norm(self) -> float:
        values = {float(g["max_grad_norm"]) for g in self.param_groups}
        if len(values) > 1:
            raise ConfigError(
                f"max_grad_norm differs between param groups ({sorted(values)}); clipping is global, "
                f"set one value for all groups"
            )
        return values.pop()

    def clip_grad_norm_(self) -> Tensor:
        """Clip all gradients by their global L2 norm; returns the pre-clip norm (0-dim f32)."""
        params = [p for g in self.param_groups for p in g["params"]]
        self._grad_norm = clip_grad_norm_(params, self._max_grad_norm())
        return self._grad_norm

    # -- logging -------------------------------------------------------------------------
    def effective_lr(self, group_index: int = 0) -> float:
        """The LR the next step applies in this group: scheduled lr x s_e."""
        g = self.param_groups[group_index]
        return F.effective_lr(g["lr"], g["entropy_scale"], g["entropy_adaptive"])

    def effective_beta1(self, group_index: int = 0) -> float:
        """The beta1 the next step applies in this group."""
        g = self.param_groups[group_index]
        return F.effective_beta1(g["betas"][0], g["ppl_scale"], g["perplexity_guided"])

    # -- step ----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update. Clips first unless :meth:`clip_grad_norm_` ran since the last step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._grad_norm is None and self._max_grad_norm() > 0:
            self.clip_grad_norm_()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps, beta1_prods = self._init_group(group)
            beta1, beta2 = group["betas"]
            F.velvet(
                params, grads, exp_avgs, exp_avg_sqs, steps, beta1_prods,
                lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                weight_decay=group["weight_decay"], entropy_scale=group["entropy_scale"],
                ppl_scale=group["ppl_scale"], entropy_adaptive=group["entropy_adaptive"],
                perplexity_guided=group["perplexity_guided"],
                sparse_mask_enabled=group["sparse_aware"] and group["sparse"], backend=self.backend,
            )
        # read the norm after the updates are queued: the one host sync of the step
        grad_norm = 0.0 if self._grad_norm is None else float(self._grad_norm)
        self._grad_norm = None
        for group in self.param_groups:
            group["grad_norm"] = grad_norm
        return loss
