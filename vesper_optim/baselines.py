"""Baseline optimizers, registered the way a plugin adds one: ``muon``, ``lion``, ``schedulefree_adamw``.

Each is a factory ``(params_or_groups, cfg: OptimConfig) -> torch.optim.Optimizer`` in
``vesper_optim.registry.OPTIMIZERS`` (so ``--optimizer muon`` works and ``vesper plugins`` lists them),
exactly what a third-party package would put in the ``vesper.optimizers`` entry-point group. They take
the param groups of ``build_param_groups`` and keep every key of them (``weight_decay``, ``param_names``,
``sparse``; ``sparse`` only means something to Velvet).

Contracts with the trainer
--------------------------
* **LR.** The trainer writes one scheduled value into every ``group["lr"]`` before each step; all three
  optimizers use it as is, and none of them rescales ``cfg`` behind your back.

  - ``muon``: the Muon groups use torch's ``adjust_lr_fn="match_rms_adamw"`` (Moonshot, "Muon is Scalable
    for LLM Training"): a (A, B) matrix's orthogonalised update is scaled by ``0.2 * sqrt(max(A, B))`` so
    that its RMS matches AdamW's, and Muon reuses the LR and weight decay tuned for AdamW. So one LR
    drives both halves; there is no ratio to keep (Keller Jordan's "original" scaling would want ~0.02
    for Muon next to ~3e-4 for AdamW).
  - ``lion``: the update is ``sign(.)``, so every coordinate moves by the full LR: Lion usually wants a
    3-10x *smaller* LR than AdamW and a 3-10x *larger* weight decay (the decay is ``lr * wd``), and
    ``beta2`` about 0.99 (our default 0.999 is AdamW's). Set them in the config; nothing is converted.
  - ``schedulefree_adamw``: schedule-free means a constant LR (``lr_schedule: constant``): a cosine decay
    on top works but is not what the method is for.

* **train() / eval().** An optimizer with callable ``train()`` and ``eval()`` methods is switched by the
  trainer (``schedulefree_adamw`` is the one here; ``muon`` and ``lion`` have neither):

  - ``optimizer.train()`` before training steps (``step()`` raises in eval mode). The factory returns it
    already in train mode, so a trainer unaware of the contract still trains;
  - ``optimizer.eval()`` before evaluation and before saving weights or optimizer state: the parameters
    then hold the averaged weights ``x`` (what to evaluate and ship), in train mode they hold the
    interpolation ``y = beta1 * x + (1 - beta1) * z`` where gradients are taken. Then ``train()`` again.
    ``eval()`` then ``train()`` restores ``y`` only to rounding (two lerps), so bit-exact resume needs
    the uninterrupted run to switch around each save too, which the contract gives: the resumed run
    loads ``x`` and ``z``, calls ``train()``, and computes the same ``y`` from the same inputs;
  - ``load_state_dict`` restores the saved mode (group key ``train_mode``): call ``train()`` after it.
  Both calls are idempotent.

* **Warm-up of schedule-free.** ``AdamWScheduleFree`` has its own linear warm-up, ``lr * (k+1) / W``.
  The trainer already applies ``cfg.warmup_steps`` to ``group["lr"]`` with the same formula
  (``schedules.lr_at``), and schedule-free's averaging weights follow ``group["lr"]`` through ``lr_max``,
  so the factory sets the optimizer's own ``warmup_steps=0``: passing ``cfg.warmup_steps`` too would warm
  up twice (a quadratic ramp). A caller that drives no schedule can build ``AdamWScheduleFree`` directly.

* **Missing extras.** ``lion`` needs ``lion-pytorch`` (``pip install 'vesper[lion]'``),
  ``schedulefree_adamw`` needs ``schedulefree`` (``pip install 'vesper[schedulefree]'``); building one
  without it raises :class:`~vesper_core.errors.BackendUnavailableError` naming the install command.
  They are imported when the optimizer is built, never when Vesper starts.

Fixed choices (OptimConfig has no field for them): Muon momentum 0.95 with Nesterov, 5 Newton-Schulz
steps, Muon eps 1e-7 (torch's defaults, from Keller Jordan's post); Lion without ``use_triton`` and with
torch-style decay ``p *= 1 - lr * wd``; schedule-free ``r=0``, ``weight_lr_power=2`` (its defaults).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
from torch.optim import Optimizer

from vesper_core.errors import BackendUnavailableError, ConfigError
from vesper_optim.registry import OPTIMIZERS

if TYPE_CHECKING:
    from vesper_optim.config import OptimConfig

__all__ = ["ADAMW_NAME_PARTS", "MuonAdamW", "is_muon_param", "split_muon_groups",
           "make_muon", "make_lion", "make_schedulefree_adamw"]

MUON = "muon"
ADAMW = "adamw"
ADAMW_NAME_PARTS = ("embed", "lm_head", "wte", "wpe", "classifier")
"""A parameter whose dotted name has a part containing one of these goes to AdamW (embeddings, heads)."""


# -- the Muon / AdamW split ----------------------------------------------------------------------
def is_muon_param(name: str, param: torch.Tensor) -> bool:
    """True for a 2-D hidden weight matrix: Muon's job. Everything else goes to AdamW.

    AdamW gets: tensors that are not 2-D (biases, norm weights, 3-D+ tensors), 2-D tensors with a side of
    1 (vectors in disguise, e.g. a ``Linear(H, 1)`` output), and any name with a part containing one of
    :data:`ADAMW_NAME_PARTS` (the embedding, which is also VesperLM's tied LM head; ``lm_head``; output
    classifiers): input/output layers are not hidden layers (Keller Jordan's and Moonshot's split).
    """
    if param.ndim != 2 or min(param.shape) < 2:
        return False
    parts = name.lower().split(".")
    return not any(key in part for part in parts for key in ADAMW_NAME_PARTS)


def _as_groups(params_or_groups: Iterable[Any]) -> list[dict[str, Any]]:
    items = list(params_or_groups)
    if not items:
        raise ConfigError("muon: got no parameters to optimize")
    if all(isinstance(item, tuple) and len(item) == 2 for item in items):  # model.named_parameters()
        items = [{"params": [p for _, p in items], "param_names": [n for n, _ in items]}]
    groups = []
    for group in items:
        if not isinstance(group, dict):
            raise ConfigError("muon splits parameters by name: pass build_param_groups(model, weight_decay) "
                              "or model.named_parameters(), not bare tensors")
        params = list(group["params"])  # may be a generator: read once
        if params and all(isinstance(p, tuple) for p in params):
            group = {**group, "params": [p for _, p in params], "param_names": [n for n, _ in params]}
        else:
            group = {**group, "params": params}
        names = group.get("param_names")
        if names is None or len(names) != len(group["params"]):
            raise ConfigError("muon splits parameters by name: every param group needs 'param_names' "
                              "(build_param_groups adds them)")
        groups.append(group)
    return groups


def split_muon_groups(params_or_groups: Iterable[Any],
                      use_muon: Callable[[str, torch.Tensor], bool] = is_muon_param) -> list[dict[str, Any]]:
    """Each group split in two, ``algorithm: "muon"`` then ``"adamw"``, other keys kept; empty halves dropped.

    Groups stay in their given order, so the model's groups still come before the metacog head's.
    """
    out = []
    for group in _as_groups(params_or_groups):
        rest = {k: v for k, v in group.items() if k not in ("params", "param_names")}
        halves = {MUON: ([], []), ADAMW: ([], [])}
        for name, p in zip(group["param_names"], group["params"]):
            params, names = halves[MUON if use_muon(name, p) else ADAMW]
            params.append(p)
            names.append(name)
        for algorithm, (params, names) in halves.items():
            if params:
                out.append({**rest, "params": params, "param_names": names, "algorithm": algorithm})
    return out


class MuonAdamW(Optimizer):
    """``torch.optim.Muon`` for the 2-D hidden matrices, ``torch.optim.AdamW`` for the rest, as one optimizer.

    ``param_groups`` is the list of both children's groups (the same dict objects, each tagged
    ``algorithm``), and ``state`` is one dict both children write into, so ``group["lr"] = ...`` reaches
    the child that steps the group and ``state_dict()`` / ``load_state_dict()`` are torch's own: exact
    round trip, JSON-friendly group keys. With ``adjust_lr_fn="match_rms_adamw"`` one LR and weight decay
    serve both halves (module docstring). ``muon`` / ``adamw`` are the children (None when empty).
    """

    def __init__(self, params: Iterable[Any], *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, adjust_lr_fn: str | None = "match_rms_adamw",
                 use_muon: Callable[[str, torch.Tensor], bool] = is_muon_param) -> None:
        self._use_muon = use_muon
        self._kwargs = {
            MUON: dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                       adjust_lr_fn=adjust_lr_fn),
            ADAMW: dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
        }
        self._built = False
        groups = split_muon_groups(params, use_muon)
        # the children fill their defaults into these very dicts; super() then adopts the same dicts
        self.muon = self._make(MUON, [g for g in groups if g["algorithm"] == MUON])
        self.adamw = self._make(ADAMW, [g for g in groups if g["algorithm"] == ADAMW])
        super().__init__(groups, {"lr": lr, "weight_decay": weight_decay})
        self._built = True
        self._link()

    def _make(self, algorithm: str, groups: list[dict[str, Any]]) -> Optimizer | None:
        if not groups:
            return None
        cls = torch.optim.Muon if algorithm == MUON else torch.optim.AdamW
        return cls(groups, **self._kwargs[algorithm])

    def _children(self) -> list[tuple[str, Optimizer]]:
        return [(name, child) for name, child in ((MUON, self.muon), (ADAMW, self.adamw)) if child is not None]

    def _link(self) -> None:
        """Point each child at its groups in ``self.param_groups`` and at ``self.state``."""
        for algorithm, child in self._children():
            groups = [g for g in self.param_groups if g["algorithm"] == algorithm]
            child.__setstate__({"state": self.state, "param_groups": groups})  # AdamW fills its defaults

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Split a new group (named parameters) like the first ones and hand each half to its child."""
        if not self._built:  # Optimizer.__init__ adopting the groups the children already hold
            super().add_param_group(param_group)
            return
        for half in split_muon_groups([param_group], self._use_muon):
            algorithm = half["algorithm"]
            super().add_param_group(half)  # checks the parameters are new
            child = getattr(self, algorithm)
            if child is None:
                setattr(self, algorithm, self._make(algorithm, [half]))
            else:
                child.add_param_group(half)
        self._link()

    def __getstate__(self) -> dict[str, Any]:  # copy/pickle keep the children (torch keeps 3 keys)
        return dict(self.__dict__)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for _, child in self._children():
            child.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = [g.get("algorithm") for g in state_dict["param_groups"]]
        now = [g["algorithm"] for g in self.param_groups]
        if saved != now:
            raise ValueError(f"muon: the saved param groups are {saved}, this optimizer has {now}; "
                             f"build it over the same model and groups")
        super().load_state_dict(state_dict)  # new group dicts and a new state dict: relink the children
        self._link()


# -- factories -----------------------------------------------------------------------------------
def _require(module: str, attr: str, *, optimizer: str, extra: str, package: str) -> Any:
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError:
        raise BackendUnavailableError(
            f"optimizer {optimizer!r} needs the {package} package, which is not installed: "
            f"pip install 'vesper[{extra}]' (or pip install {package})") from None


@OPTIMIZERS.register("muon")
def make_muon(params_or_groups: Iterable[Any], cfg: OptimConfig) -> MuonAdamW:
    """Muon (2-D hidden matrices) + AdamW (the rest) with cfg's lr, betas, eps and weight decay."""
    return MuonAdamW(params_or_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("lion")
def make_lion(params_or_groups: Iterable[Any], cfg: OptimConfig) -> Optimizer:
    """``lion_pytorch.Lion`` with cfg's lr, betas and weight decay as given (see the LR note above)."""
    lion = _require("lion_pytorch", "Lion", optimizer="lion", extra="lion", package="lion-pytorch")
    if not cfg.lr > 0:
        raise ConfigError(f"optimizer 'lion' needs lr > 0, got {cfg.lr!r}")
    return lion(params_or_groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("schedulefree_adamw")
def make_schedulefree_adamw(params_or_groups: Iterable[Any], cfg: OptimConfig) -> Optimizer:
    """``schedulefree.AdamWScheduleFree``, returned in train mode, own warm-up 0 (the trainer's applies)."""
    cls = _require("schedulefree", "AdamWScheduleFree", optimizer="schedulefree_adamw", extra="schedulefree",
                   package="schedulefree")
    optimizer = cls(params_or_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                    warmup_steps=0)
    optimizer.train()  # no state yet: only flips the mode
    return optimizer
