"""Chat templates: conversations -> text -> token ids plus a loss mask.

A template is a Jinja string in the Hugging Face convention (variables ``messages``,
``add_generation_prompt``, ``bos_token``, ``eos_token``; ``raise_exception(msg)``), so the
default template, one read from a tokenizer folder's ``tokenizer_config.json`` and one recorded
in a checkpoint all take the same path.

The default (``DEFAULT_TEMPLATE``, name "chatml") renders every turn as::

    <|im_start|>{role}\\n{content}<|im_end|>\\n

and a generation prompt as ``<|im_start|>assistant\\n``. Its two special tokens are added to the
tokenizer when missing; generation stops on ``<|im_end|>`` (``end_of_turn``).

Masking: :meth:`ChatTemplate.encode` renders growing prefixes of the conversation, so each message
maps to the text its turn adds (the generation prompt of an assistant turn belongs to the prompt).
An assistant turn's text is trained up to and including its end-of-turn token; everything else
gets ``IGNORE_INDEX`` unless ``train_on_prompt``. Segments are encoded one by one and
concatenated, so a token never straddles a prompt/answer boundary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from vesper_core.errors import ConfigError, DataError
from vesper_core.kernels.cross_entropy import IGNORE_INDEX

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}
ROLES = ("system", "user", "assistant")
CHECKPOINT_KEY = "chat_template"  # checkpoint metadata key holding ChatTemplate.to_dict()
DEFAULT_NAME = "chatml"
TURN_START, TURN_END = "<|im_start|>", "<|im_end|>"
DEFAULT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
# end-of-turn markers of well-known templates, tried in order when a tokenizer folder's template is read
_KNOWN_END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


def _raise_exception(message: str):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    from datetime import datetime

    return datetime.now().strftime(fmt)


def _compile(source: str, name: str):
    try:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # jinja2 comes with torch; a broken environment gets one line
        raise ConfigError("chat templates need jinja2: pip install 'vesper[chat]'") from None
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now  # used by some Hugging Face templates for today's date
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise ConfigError(f"chat template {name} is not valid Jinja: {exc}") from None


@dataclass
class ChatTemplate:
    """A named Jinja chat template with the special tokens it needs and the token that ends a turn."""

    name: str
    source: str  # the Jinja text
    special_tokens: list[str] = field(default_factory=list)
    end_of_turn: str = TURN_END
    bos_token: str = ""
    eos_token: str = ""

    @cached_property
    def _jinja(self):
        return _compile(self.source, self.name)

    # -- text ----------------------------------------------------------------------------
    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The conversation as the model sees it (with the assistant prompt when asked)."""
        from jinja2 import TemplateError

        try:
            return self._jinja.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                      bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as exc:
            raise DataError(f"chat template {self.name} refused the conversation: {exc}") from None

    def segments(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
        """``[(text, trained), ...]`` whose texts joined are ``render(messages, add_generation_prompt)``."""
        out: list[tuple[str, bool]] = []
        done = ""  # text rendered so far

        def grow(text: str, trained: bool, what: str) -> None:
            nonlocal done
            if not text.startswith(done):
                raise ConfigError(
                    f"chat template {self.name} does not render a conversation as growing prefixes ({what} changes "
                    f"the text before it), so assistant turns cannot be masked; use the default template "
                    f"(--chat-template default)")
            piece = text[len(done):]
            if piece:
                if trained and self.end_of_turn and self.end_of_turn in piece:
                    cut = piece.rindex(self.end_of_turn) + len(self.end_of_turn)
                    out.append((piece[:cut], True))
                    if piece[cut:]:
                        out.append((piece[cut:], False))
                else:
                    out.append((piece, trained))
            done = text

        for i, message in enumerate(messages):
            assistant = message.get("role") == "assistant"
            if assistant:  # the assistant prompt is part of the prompt
                grow(self.render(messages[:i], add_generation_prompt=True), False, f"message {i + 1}'s prompt")
            grow(self.render(messages[:i + 1]), assistant, f"message {i + 1}")
        if add_generation_prompt:
            grow(self.render(messages, add_generation_prompt=True), False, "the generation prompt")
        return out

    # -- tokens --------------------------------------------------------------------------
    def check_tokenizer(self, tokenizer) -> None:
        """ConfigError when ``tokenizer`` lacks one of the template's special tokens."""
        missing = [t for t in self.special_tokens if tokenizer.tokenizer.token_to_id(t) is None]
        if missing:
            raise ConfigError(
                f"tokenizer {tokenizer.name} lacks the chat template's special token(s) {', '.join(missing)}; "
                f"add them with vesper_data.chat.add_chat_tokens (vesper train does so and grows the embedding)")

    def encode(self, tokenizer, messages: Sequence[Message], *, add_generation_prompt: bool = False,
               train_on_prompt: bool = False) -> tuple[list[int], list[int]]:
        """(token ids, labels): labels equal the ids on trained tokens, ``IGNORE_INDEX`` elsewhere.

        Trained tokens are the assistant turns' (with their end-of-turn token); with
        ``train_on_prompt`` every token is trained. Labels are aligned with ids (not shifted).
        """
        self.check_tokenizer(tokenizer)
        pieces = self.segments(messages, add_generation_prompt)
        encoded = tokenizer.encode_batch([text for text, _ in pieces]) if pieces else []
        ids: list[int] = []
        labels: list[int] = []
        for (_, trained), part in zip(pieces, encoded):
            ids.extend(part)
            labels.extend(part if trained or train_on_prompt else [IGNORE_INDEX] * len(part))
        return ids, labels

    # -- records -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "special_tokens": list(self.special_tokens),
                "end_of_turn": self.end_of_turn, "bos_token": self.bos_token, "eos_token": self.eos_token}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "record") -> "ChatTemplate":
        if not isinstance(d, dict) or not isinstance(d.get("source"), str):
            raise ConfigError(f"the chat template recorded in {where} is malformed (no Jinja 'source')")
        return cls(name=str(d.get("name", "recorded")), source=d["source"],
                   special_tokens=[str(t) for t in d.get("special_tokens") or []],
                   end_of_turn=str(d.get("end_of_turn") or ""), bos_token=str(d.get("bos_token") or ""),
                   eos_token=str(d.get("eos_token") or ""))

    def same_as(self, other: "ChatTemplate") -> bool:
        return self.to_dict() == other.to_dict()


def default_template() -> ChatTemplate:
    return ChatTemplate(name=DEFAULT_NAME, source=DEFAULT_TEMPLATE, special_tokens=[TURN_START, TURN_END],
                        end_of_turn=TURN_END)


def add_chat_tokens(tokenizer, template: ChatTemplate) -> list[str]:
    """Add the template's special tokens that ``tokenizer`` lacks; returns those added (new ids at the end)."""
    return tokenizer.add_special_tokens(template.special_tokens)


# -- loading -----------------------------------------------------------------------------------------
def _token_text(value: Any) -> str:
    if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _from_tokenizer_config(config_path: Path, jinja_path: Path | None) -> ChatTemplate | None:
    config: dict[str, Any] = {}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{config_path} is not valid JSON ({exc}); fix it or pass --chat-template default")
        if not isinstance(config, dict):
            raise ConfigError(f"{config_path} must hold a JSON object")
    source = config.get("chat_template")
    if isinstance(source, list):  # several named templates: the "default" one
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default") or next(iter(named.values()), None)
    if source is None and jinja_path is not None and jinja_path.is_file():
        source = jinja_path.read_text(encoding="utf-8")
    if not isinstance(source, str) or not source.strip():
        return None
    bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
    specials = [t for t in dict.fromkeys([bos, eos, *map(_token_text, config.get("additional_special_tokens") or [])])
                if t]
    for marker in (*_KNOWN_END_MARKERS, eos):  # markers the template writes literally are specials too
        if marker and marker in source and marker not in specials:
            specials.append(marker)
    end = next((m for m in _KNOWN_END_MARKERS if m in source), eos)
    where = config_path.parent if config_path.is_file() else jinja_path
    return ChatTemplate(name=str(where), source=source, special_tokens=specials, end_of_turn=end,
                        bos_token=bos, eos_token=eos)


def _from_checkpoint(path: Path) -> ChatTemplate | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(CHECKPOINT_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the chat template recorded in {path}: {exc}") from None
    if raw is None:
        return None
    try:
        return ChatTemplate.from_dict(json.loads(raw), str(path))
    except json.JSONDecodeError:
        raise ConfigError(f"the chat template recorded in {path} is not valid JSON") from None


def _step_and_time(path: Path) -> tuple[int, float]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            step = int((f.metadata() or {}).get("step", 0))
    except Exception:  # unreadable: ranked last, reported if chosen
        step = -1
    return step, path.stat().st_mtime


def load_chat_template(source: str | Path | None = None) -> ChatTemplate:
    """The chat template of ``source``, else the documented default.

    ``source``: None or "default"/"chatml" (the default); a checkpoint file (the template it was
    fine-tuned with, recorded in its metadata) or a run folder (its newest checkpoint); a tokenizer
    folder or ``tokenizer_config.json`` with a ``chat_template`` (or a ``chat_template.jinja``); a
    ``.jinja`` file. A checkpoint or folder without a template gives the default.
    """
    template = _load(source)
    _ = template._jinja  # invalid Jinja is refused now, not at the first conversation
    return template


def _load(source: str | Path | None) -> ChatTemplate:
    if source is None or str(source) in ("default", DEFAULT_NAME):
        return default_template()
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(f"--chat-template {source}: no such file or folder; pass 'default', a tokenizer folder "
                          f"with tokenizer_config.json, a .jinja file or a checkpoint")
    if path.is_dir():
        found = _from_tokenizer_config(path / "tokenizer_config.json", path / "chat_template.jinja")
        if found is not None:
            return found
        checkpoints = [p for p in path.glob("checkpoint-*.safetensors") if ".state." not in p.name]
        if checkpoints:  # a run folder: the newest checkpoint (highest step, final last when steps tie)
            return _from_checkpoint(max(checkpoints, key=_step_and_time)) or default_template()
        return default_template()
    if path.suffix == ".safetensors":
        return _from_checkpoint(path) or default_template()
    if path.name.endswith(".json"):
        found = _from_tokenizer_config(path, None)
        if found is None:
            raise ConfigError(f"{path} has no 'chat_template'; pass a tokenizer_config.json that has one")
        return found
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read chat template {path}: {exc}") from None
    sibling = path.parent / "tokenizer_config.json"
    found = _from_tokenizer_config(sibling, None) if sibling.is_file() else None
    specials = [m for m in _KNOWN_END_MARKERS + (TURN_START,) if m in text]
    end = next((m for m in _KNOWN_END_MARKERS if m in text), "")
    template = ChatTemplate(name=str(path), source=text, special_tokens=specials, end_of_turn=end)
    if found is not None:
        template.bos_token, template.eos_token = found.bos_token, found.eos_token
    return template
