"""A multi-turn conversation with a checkpoint: history, system prompt, chat template, streamed replies.

:class:`ChatSession` is UI-free (``vesper chat`` and the studio drive it): every reply renders the
system prompt + the turns still in context + the new user message through the chat template
(``vesper_data.chat``: the one the checkpoint was fine-tuned with, else the ChatML default) with the
assistant's generation prompt, and streams the answer until the template's end-of-turn token
(or EOS, a stop string, ``max_tokens``). The end-of-turn token itself is never shown.

Context window: the prompt plus ``max_tokens`` must fit the model's context. When it would not,
the oldest turns (a user message with the assistant reply that followed it) leave the context
first; the system prompt and the new message always stay. They remain in the transcript that
``save`` writes. A new message that cannot fit even alone is refused (ConfigError) and not kept.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from vesper_core.atomic import write_json_atomic
from vesper_core.errors import ConfigError
from vesper_data.chat import ChatTemplate, Message, load_chat_template
from vesper_cli.engine.generation import Generator, SamplingConfig, load_generator

SAVE_FORMAT = "vesper-chat-1"
DEFAULT_MAX_TOKENS = 256


class ChatSession:
    """One conversation; ``stream_reply`` adds a user message and yields the reply's text as it comes."""

    def __init__(self, gen: Generator, template: ChatTemplate, *, sampling: SamplingConfig,
                 system: str | None = None):
        missing = [t for t in template.special_tokens if gen.tokenizer.tokenizer.token_to_id(t) is None]
        if missing:  # a model never fine-tuned on conversations has no embedding for the template's tokens
            where = gen.checkpoint.path if gen.checkpoint is not None else "the model"
            raise ConfigError(
                f"{where} has no chat tokens ({', '.join(missing)} of chat template {template.name} are not in its "
                f"tokenizer): it was not fine-tuned on conversations. Fine-tune it first (vesper train --init-from "
                f"CKPT --dataset chats.jsonl), or use vesper generate for plain text")
        window = gen.model.config.max_position_embeddings
        if sampling.max_tokens <= 0 or sampling.max_tokens >= window:
            raise ConfigError(f"--max-tokens must be in 1..{window - 1} (the model's context is {window} positions "
                              f"and the conversation needs room), got {sampling.max_tokens}")
        self.gen = gen
        self.template = template
        self.sampling = sampling
        self.system = system or None
        self.window = window
        end_id = gen.tokenizer.tokenizer.token_to_id(template.end_of_turn) if template.end_of_turn else None
        self.stop_token_ids: tuple[int, ...] = (end_id,) if end_id is not None else ()
        if end_id is None and template.end_of_turn:  # a multi-token marker: stop on its text instead
            self.sampling = SamplingConfig(**{**asdict(sampling), "stop": (*sampling.stop, template.end_of_turn)})
        self.history: list[Message] = []  # the turns in context (no system message)
        self.transcript: list[Message] = []  # every turn of the conversation since the last reset
        self.num_trimmed = 0  # turns the last reply dropped from the context
        self.stats: dict[str, Any] = {}
        self._rng = (torch.Generator(device=gen.device).manual_seed(sampling.seed)
                     if sampling.seed is not None else None)

    # -- the conversation --------------------------------------------------------------------------
    @property
    def messages(self) -> list[Message]:
        """What the model sees next: the system prompt (if any) and the turns in context."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + list(self.history)

    def prompt_ids(self, messages: list[Message] | None = None) -> list[int]:
        """Token ids of ``messages`` (default: ``self.messages``) with the assistant's generation prompt."""
        ids, _ = self.template.encode(self.gen.tokenizer, self.messages if messages is None else messages,
                                      add_generation_prompt=True)
        return ids

    def _fit(self, user_text: str) -> list[int]:
        """Add the user message, dropping the oldest turns until prompt + max_tokens fits; the prompt's ids."""
        budget = self.window - self.sampling.max_tokens
        candidate = self.history + [{"role": "user", "content": user_text}]
        system = [{"role": "system", "content": self.system}] if self.system else []
        dropped = 0
        ids = self.prompt_ids(system + candidate)
        while len(ids) > budget and len(candidate) > 1:
            cut = 1
            while cut < len(candidate) - 1 and candidate[cut]["role"] != "user":
                cut += 1  # a turn: the oldest message and the replies up to the next user message
            candidate = candidate[cut:]
            dropped += 1
            ids = self.prompt_ids(system + candidate)
        if len(ids) > budget:
            raise ConfigError(
                f"the message{' with the system prompt' if self.system else ''} is {len(ids)} tokens; with --max-tokens "
                f"{self.sampling.max_tokens} it does not fit the model's context of {self.window}. Shorten it or "
                f"lower --max-tokens")
        self.history = candidate
        self.num_trimmed = dropped
        return ids

    def stream_reply(self, user_text: str) -> Iterator[str]:
        """The reply to ``user_text``, piece by piece. The message is checked (and the context trimmed) now,
        so a message that cannot be answered raises here, before anything is shown; the reply joins the
        history when the stream ends (also when the caller stops early: the partial reply is what the model
        said)."""
        ids = self._begin(user_text)
        self.gen.stats = {}

        def pieces() -> Iterator[str]:
            said: list[str] = []
            start = time.perf_counter()
            try:
                for piece in self.gen.stream_ids(ids, self.sampling, self._rng, stop_token_ids=self.stop_token_ids):
                    said.append(piece)
                    yield piece
            finally:
                self._end("".join(said), dict(self.gen.stats) or _stats(0, time.perf_counter() - start, "interrupted"))

        return pieces()

    def stream_reply_metacog(self, user_text: str, summary, overrides: Mapping[str, float] | None = None,
                             boundary_ids: frozenset[int] | None = None) -> Iterator[Any]:
        """``stream_reply`` regulated by the checkpoint's meta head: yields ``metacog_generation.Piece``
        (text + confidence); ``summary`` (a MetacogSummary) is filled as it goes."""
        from vesper_cli.engine.metacog_generation import metacog_stream

        ids = self._begin(user_text)

        def pieces() -> Iterator[Any]:
            said: list[str] = []
            try:
                for piece in metacog_stream(self.gen, None, self.sampling, summary, generator=self._rng,
                                            overrides=overrides, boundary_ids=boundary_ids, prompt_ids=ids,
                                            stop_token_ids=self.stop_token_ids):
                    said.append(piece.text)
                    yield piece
            finally:
                self._end("".join(said), _stats(summary.tokens, summary.seconds, summary.stop_reason))

        return pieces()

    def _begin(self, user_text: str) -> list[int]:
        if not user_text.strip():
            raise ConfigError("the message is empty; type some text")
        ids = self._fit(user_text)
        self.transcript.append({"role": "user", "content": user_text})
        return ids

    def _end(self, reply: str, stats: dict[str, Any]) -> None:
        reply = reply.strip()
        self.history.append({"role": "assistant", "content": reply})
        self.transcript.append({"role": "assistant", "content": reply})
        self.stats = stats

    def reply(self, user_text: str) -> str:
        """The whole reply at once."""
        return "".join(self.stream_reply(user_text))

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.history.clear()
        self.transcript.clear()
        self.num_trimmed = 0

    # -- files -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The transcript as chat training data reads it (``messages``), with what produced it."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return {"format": SAVE_FORMAT, "model": str(self.gen.checkpoint.path) if self.gen.checkpoint else None,
                "template": self.template.name, "sampling": asdict(self.sampling),
                "messages": system + list(self.transcript), "in_context": len(self.history)}

    def save(self, path: str | Path) -> Path:
        """Write the conversation as JSON (atomically); returns the path."""
        path = Path(path).expanduser()
        if path.is_dir():
            raise ConfigError(f"{path} is a folder; give a file name such as {path / 'chat.json'}")
        if not path.parent.is_dir():
            raise ConfigError(f"cannot save to {path}: the folder {path.parent} does not exist")
        write_json_atomic(path, self.to_dict())
        return path


def _stats(num_tokens: int, seconds: float, stopped_by: str) -> dict[str, Any]:
    return {"new_tokens": num_tokens, "seconds": seconds,
            "tokens_per_sec": num_tokens / seconds if seconds > 0 else 0.0, "stopped_by": stopped_by}


def open_chat(model_path: str | Path, *, sampling: SamplingConfig, system: str | None = None,
              chat_template: str | None = None, tokenizer: str | None = None,
              device: torch.device | str = "cpu", dtype: str = "f32") -> ChatSession:
    """Load a checkpoint and its chat template (``chat_template`` overrides the recorded one);
    ``sampling.max_tokens`` 0 means 256, or half the context when that is less; ``dtype`` as
    :func:`load_generator`'s (f32 | bf16 | f16 | int8)."""
    gen = load_generator(model_path, tokenizer=tokenizer, device=device, dtype=dtype)
    template = load_chat_template(chat_template or gen.checkpoint.path)
    if sampling.max_tokens == 0:  # auto: room for a reply without crowding out the conversation
        window = gen.model.config.max_position_embeddings
        sampling = SamplingConfig(**{**asdict(sampling), "max_tokens": min(DEFAULT_MAX_TOKENS, window // 2)})
    return ChatSession(gen, template, sampling=sampling, system=system)
