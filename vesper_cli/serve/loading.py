"""What ``vesper serve`` loads before it listens: the generator (with --dtype) and the chat prompts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from vesper_cli.engine.generation import Generator, load_generator
from vesper_core.device import resolve_device
from vesper_core.errors import ConfigError


def load_serving_generator(model: str | Path, *, tokenizer: str | None = None, dtype: str = "f32",
                           device: str = "auto") -> Generator:
    generator = load_generator(model, tokenizer=tokenizer, device=resolve_device(device), dtype=dtype)
    generator.model.requires_grad_(False)
    return generator


@dataclass
class ChatPrompts:
    """Chat messages -> prompt ids with the model's chat template, and how an assistant turn ends.

    When the tokenizer has the template's special tokens (a model fine-tuned with ``vesper train --init-from``
    on chat data), the ids are the template's own encoding, as in training, and the end-of-turn token stops
    generation. A tokenizer without them (a base model) gets the rendered text encoded as plain text, and the
    end-of-turn text is a stop string instead.
    """

    template: Any  # vesper_data.chat.ChatTemplate
    tokenizer: Any  # vesper_data.tokenizers.VesperTokenizer
    has_special_tokens: bool

    def encode(self, messages: Sequence[dict[str, str]]) -> list[int]:
        if self.has_special_tokens:
            ids, _labels = self.template.encode(self.tokenizer, messages, add_generation_prompt=True)
            return ids
        return self.tokenizer.encode(self.template.render(messages, add_generation_prompt=True))

    @property
    def stop_strings(self) -> tuple[str, ...]:
        end = self.template.end_of_turn
        return (end,) if end and not self.has_special_tokens else ()

    @property
    def stop_ids(self) -> tuple[int, ...]:
        end = self.template.end_of_turn
        token = self.tokenizer.tokenizer.token_to_id(end) if end and self.has_special_tokens else None
        return (token,) if token is not None else ()

    def describe(self) -> str:
        how = "its special tokens" if self.has_special_tokens else "plain text (the tokenizer lacks its special tokens)"
        return f"template {self.template.name}, encoded with {how}"


def load_chat_prompts(generator: Generator, source: str | None) -> ChatPrompts:
    """The chat template named by ``source`` (--chat-template), else the one recorded with the checkpoint, else
    the documented default (ChatML)."""
    from vesper_data.chat import load_chat_template

    template = load_chat_template(source if source is not None else generator.checkpoint.path)
    try:
        template.check_tokenizer(generator.tokenizer)
        has_special = True
    except ConfigError:
        has_special = False
    return ChatPrompts(template=template, tokenizer=generator.tokenizer, has_special_tokens=has_special)
