"""The OpenAI request bodies ``vesper serve`` accepts, checked strictly, and the response shapes it returns.

Types are strict (``"5"`` is not a number, ``true`` is not an integer); fields this server does not know are
ignored, as OpenAI's own clients send a few optional ones; fields it knows but cannot honour (log-probs, echo,
frequency/presence penalties, logit bias, tools) are refused with a 400 that names them rather than ignored.
Two extensions that ``vesper generate`` has: ``top_k`` and ``repetition_penalty``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vesper_cli.serve.errors import APIError, bad_request

MAX_STOP_STRINGS = 4  # OpenAI's limit


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


class _SamplingFields(_Strict):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-2**63, lt=2**63)
    user: str | None = None
    # extensions, as in `vesper generate`
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0, le=100)
    # known to OpenAI, refused here unless left at their neutral value
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    logprobs: Any = None

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise bad_request(f"'stop' has {len(stops)} strings; at most {MAX_STOP_STRINGS} are allowed", "stop")
        if any(not s for s in stops):
            raise bad_request("'stop' strings must not be empty", "stop")
        return tuple(stops)

    def refuse_unsupported(self, extra: dict[str, Any] | None = None) -> None:
        neutral = {"frequency_penalty": self.frequency_penalty in (None, 0),
                   "presence_penalty": self.presence_penalty in (None, 0),
                   "logit_bias": not self.logit_bias, "logprobs": self.logprobs in (None, False),
                   **(extra or {})}
        for name, ok in neutral.items():
            if not ok:
                raise bad_request(f"'{name}' is not supported by vesper serve; leave it out "
                                  f"(top_k and repetition_penalty are available instead)", name, "unsupported_parameter")


class CompletionRequest(_SamplingFields):
    prompt: str | list[str]
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if not prompts:
            raise bad_request("'prompt' is an empty list; send at least one prompt", "prompt")
        return prompts


class ContentPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def token_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse(model: type[_Strict], payload: Any) -> Any:
    """``payload`` (decoded JSON) as ``model``, or a 400 naming the first bad field."""
    if not isinstance(payload, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if isinstance(part, int) or part in _FIELDS) or None
        given = "" if first["type"] == "missing" else f" (got {_short(first.get('input'))})"
        more = f"; {exc.error_count() - 1} more problem(s)" if exc.error_count() > 1 else ""
        raise bad_request(f"'{where}': {first['msg']}{given}{more}", where, "invalid_value") from None


def _field_names() -> set[str]:
    models = (StreamOptions, CompletionRequest, ContentPart, ChatMessage, ChatCompletionRequest)
    return {name for model in models for name in model.model_fields}


_FIELDS = _field_names()  # a validation error's location keeps these (and list indices), not union tags


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- responses ----------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def not_found(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(404, message, param=param, code=code)
