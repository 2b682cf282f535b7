"""lm-evaluation-harness on a Vesper checkpoint: the ``vesper`` model type.

Importing this module registers ``vesper`` with lm-eval (the ``lm-eval`` extra), so any lm-eval task whose
data is available runs on a checkpoint::

    import lm_eval
    import vesper_cli.engine.lm_eval_adapter  # registers "vesper"

    results = lm_eval.simple_evaluate(model="vesper", model_args="model=run/checkpoint-final.safetensors",
                                      tasks=["my_task"], task_manager=lm_eval.tasks.TaskManager(include_path="tasks/"))

or ``vesper eval --model CKPT --lm-eval-tasks my_task --include-path tasks/``. ``model_args`` keys:
``model`` (checkpoint or run folder), ``tokenizer``, ``device``, ``dtype`` (autocast: f32 | bf16 | f16),
``batch_size``, ``max_gen_toks`` (default new tokens for ``generate_until``).

The three request types map to :class:`~vesper_cli.engine.loglikelihood.LikelihoodScorer`
(``loglikelihood``, ``loglikelihood_rolling``) and the Generator (``generate_until``: greedy unless the
task asks to sample; the context keeps its last tokens when it would not fit). Single process: the
model runs on one device.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

from vesper_core.errors import BackendUnavailableError, ConfigError

INSTALL_HINT = "pip install 'vesper[lm-eval]'"


def require_lm_eval() -> None:
    """BackendUnavailableError with the install command when lm-eval is not installed."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise BackendUnavailableError(f"lm-evaluation-harness is not installed; {INSTALL_HINT}") from None


require_lm_eval()

import torch  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402

from vesper_core.device import parse_dtype, resolve_device  # noqa: E402
from vesper_cli.engine.eval_tasks import generate_answer  # noqa: E402
from vesper_cli.engine.generation import Generator, SamplingConfig, load_generator  # noqa: E402
from vesper_cli.engine.loglikelihood import LikelihoodScorer  # noqa: E402
from vesper_cli.engine.step import autocast_factory  # noqa: E402

DEFAULT_MAX_GEN_TOKS = 256


@register_model("vesper")
class VesperEvalLM(LM):
    """A Vesper checkpoint as an lm-eval ``LM``."""

    def __init__(self, model: str | None = None, tokenizer: str | None = None, device: str | None = "auto",
                 dtype: str = "f32", batch_size: int | str | None = 8, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
                 generator: Generator | None = None, autocast: Callable | None = None, **_ignored: Any):
        super().__init__()
        if generator is None:
            if not model:
                raise ConfigError("the vesper lm-eval model needs model=CHECKPOINT in its model_args")
            generator = load_generator(str(model), tokenizer=tokenizer, device=resolve_device(str(device or "auto")))
        self.gen = generator
        if autocast is None:
            autocast = autocast_factory(generator.device, parse_dtype(dtype))
        size = int(batch_size) if isinstance(batch_size, int) or str(batch_size).isdigit() else 8  # "auto": 8
        if int(max_gen_toks) <= 0:
            raise ConfigError(f"max_gen_toks must be positive, got {max_gen_toks}")
        self.max_gen_toks = int(max_gen_toks)
        self.scorer = LikelihoodScorer(generator.model, generator.tokenizer, generator.device, batch_size=size,
                                       autocast=autocast)
        self._device = generator.device

    @classmethod
    def from_generator(cls, gen: Generator, *, batch_size: int = 8, autocast: Callable | None = None,
                       max_gen_toks: int = DEFAULT_MAX_GEN_TOKS) -> "VesperEvalLM":
        """Wrap a checkpoint already loaded (``vesper eval`` loads it once for every part)."""
        return cls(generator=gen, batch_size=batch_size, autocast=autocast or contextlib.nullcontext,
                   max_gen_toks=max_gen_toks)

    @property
    def tokenizer_name(self) -> str:
        return self.gen.tokenizer.name

    # -- chat (lm-eval's --apply_chat_template) --------------------------------------------------------
    @property
    def _template(self):
        from vesper_data.chat import load_chat_template

        if not hasattr(self, "_chat_template"):
            self._chat_template = load_chat_template(self.gen.checkpoint.path if self.gen.checkpoint else None)
        return self._chat_template

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self._template.source if chat_template else ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The checkpoint's chat template (else ChatML) over lm-eval's few-shot turns; its special tokens are
        kept as text, and the tokenizer maps them back to their ids."""
        return self._template.render(chat_history, add_generation_prompt=add_generation_prompt)

    # -- the three request types -------------------------------------------------------------------
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        scored = self.scorer.loglikelihood([r.args for r in requests])
        out = []
        for request, s in zip(requests, scored):
            result = (s.logprob, s.is_greedy)
            self.cache_hook.add_partial("loglikelihood", request.args, result)
            out.append(result)
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for request in requests:
            (text,) = request.args
            logprob = self.scorer.rolling(text).logprob
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), logprob)
            out.append(logprob)
        return out

    def generate_until(self, requests) -> list[str]:
        out = []
        for request in requests:
            context, gen_kwargs = request.args
            text = self._generate(context, dict(gen_kwargs or {}))
            self.cache_hook.add_partial("generate_until", request.args, text)
            out.append(text)
        return out

    def _generate(self, context: str, kwargs: dict[str, Any]) -> str:
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_tokens = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        if not kwargs.pop("do_sample", False):
            temperature = 0.0
        if temperature == 0.0:
            return generate_answer(self.gen, context, max_tokens=max_tokens, stop=[s for s in until if s])
        window = self.gen.model.config.max_position_embeddings
        ids = self.gen.tokenizer.encode(context)[-(window - max_tokens):] or [self.scorer.prefix_id]
        sampling = SamplingConfig(max_tokens=max_tokens, temperature=temperature,
                                  top_p=float(kwargs.pop("top_p", 1.0) or 1.0), top_k=int(kwargs.pop("top_k", 0) or 0),
                                  stop=tuple(s for s in until if s))
        return "".join(self.gen.stream_ids(ids, sampling))


def _metrics(task_result: dict[str, Any]) -> dict[str, Any]:
    """``{"acc,none": 0.5, "acc_stderr,none": "N/A", "sample_len": 4, "alias": ...}`` -> ``{"count": 4, "acc": 0.5}``."""
    out = {}
    for key, value in task_result.items():
        if key == "alias" or "_stderr" in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if key == "sample_len":
            out["count"] = int(value)
            continue
        metric, _, filter_name = key.partition(",")
        out[metric if filter_name in ("", "none") else key] = float(value)
    return out


def run_lm_eval(lm: VesperEvalLM, tasks: list[str], *, include_path: str | None = None, limit: int | None = None,
                num_fewshot: int | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate ``lm`` on lm-eval ``tasks``; returns ``{task: {metric: value}}`` (no bootstrap stderr)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = None
    if include_path:  # local tasks alone index in seconds; lm-eval's thousands of built-in ones take far longer
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if not all(manager.match_tasks([t]) for t in tasks):
            manager = None
    manager = manager or TaskManager(include_path=include_path)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise ConfigError(f"unknown lm-eval task(s) {', '.join(unknown)}; pass --include-path DIR for local task "
                          f"YAMLs, or see `lm-eval ls tasks`")
    with torch.no_grad():
        results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                                          num_fewshot=num_fewshot, bootstrap_iters=0, log_samples=False)
    return {task: _metrics(values) for task, values in (results or {}).get("results", {}).items()}
