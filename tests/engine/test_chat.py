"""ChatSession: the template's prompt, stopping at end-of-turn, trimming the oldest turns, reset and save.

The models are untrained nano models whose output is pinned to one token (final norm weight 0, its bias
along that token's enlarged embedding: every position predicts it), so a reply is known in advance.
"""

from __future__ import annotations

import json

import pytest
import torch

from vesper_core.errors import ConfigError
from vesper_core.model import VesperLM
from vesper_core.presets import model_config
from vesper_data.chat import default_template
from vesper_data.tokenizers import load_tokenizer
from vesper_cli.engine.chat import ChatSession
from vesper_cli.engine.generation import Generator, SamplingConfig


def chat_tokenizer():
    tokenizer = load_tokenizer("byte")
    tokenizer.add_special_tokens(default_template().special_tokens)
    return tokenizer


def pinned_model(tokenizer, token_id: int, context: int = 128) -> VesperLM:
    """A model whose every prediction is ``token_id``."""
    torch.manual_seed(0)
    model = VesperLM(model_config("nano", vocab_size=tokenizer.vocab_size, max_position_embeddings=context)).eval()
    with torch.no_grad():
        model.embeddings.weight[token_id] *= 50
        model.final_norm.weight.zero_()
        model.final_norm.bias.copy_(model.embeddings.weight[token_id])
    return model


def session(token: str, *, context: int = 128, max_tokens: int = 8, system: str | None = None) -> ChatSession:
    tokenizer = chat_tokenizer()
    token_id = tokenizer.tokenizer.token_to_id(token) if len(token) > 1 else tokenizer.encode(token)[0]
    gen = Generator(model=pinned_model(tokenizer, token_id, context), tokenizer=tokenizer,
                    device=torch.device("cpu"), checkpoint=None)
    return ChatSession(gen, default_template(), sampling=SamplingConfig(max_tokens=max_tokens, temperature=0.0),
                       system=system)


def test_the_reply_stops_at_the_end_of_turn_token():
    chat = session("<|im_end|>")
    assert chat.reply("hello") == ""
    assert chat.stats["stopped_by"] == "stop_token" and chat.stats["new_tokens"] == 0
    assert chat.history == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": ""}]


def test_without_an_end_of_turn_the_reply_runs_to_max_tokens():
    chat = session("a", max_tokens=6)
    assert chat.reply("hello") == "aaaaaa"
    assert chat.stats["stopped_by"] == "max_tokens"


def test_the_prompt_is_the_template_with_the_generation_prompt():
    chat = session("a", system="be brief")
    chat.reply("hi")
    expected = ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                "<|im_start|>assistant\naaaaaaaa<|im_end|>\n<|im_start|>assistant\n")
    rendered = chat.gen.tokenizer.decode(chat.prompt_ids(), skip_special_tokens=False)
    assert rendered == expected


def test_oldest_turns_leave_the_context_when_it_would_overflow():
    chat = session("<|im_end|>", context=64, max_tokens=8, system="sys")
    budget = 64 - 8
    for i in range(6):
        chat.reply(f"message {i}")  # a turn is 30 tokens in ChatML with the byte tokenizer
        assert len(chat.prompt_ids()) - len(chat.gen.tokenizer.encode("<|im_start|>assistant\n")) <= budget
    users = [m["content"] for m in chat.history if m["role"] == "user"]
    assert users[-1] == "message 5" and "message 0" not in users
    assert chat.messages[0] == {"role": "system", "content": "sys"}  # the system prompt always stays
    assert chat.num_trimmed == 1  # the last reply made room for itself by dropping one turn
    assert [m["content"] for m in chat.transcript if m["role"] == "user"] == [f"message {i}" for i in range(6)]
    # what is left is as much as fits: one more turn would not have
    kept = len(users)
    longer = chat.prompt_ids(chat.messages[:1] + chat.transcript[-2 * kept - 2:-1])
    assert len(longer) > budget


def test_a_message_too_long_for_the_context_is_refused_and_not_kept():
    chat = session("<|im_end|>", context=64, max_tokens=8)
    chat.reply("short")
    with pytest.raises(ConfigError, match="does not fit the model's context of 64"):
        chat.reply("x" * 80)
    assert [m["content"] for m in chat.transcript] == ["short", ""]


def test_reset_and_save(tmp_path):
    chat = session("a", max_tokens=3, system="sys")
    chat.reply("one")
    chat.reply("two")
    path = chat.save(tmp_path / "chat.json")
    saved = json.loads(path.read_text())
    assert saved["format"] == "vesper-chat-1" and saved["template"] == "chatml"
    assert saved["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "one"},
                                 {"role": "assistant", "content": "aaa"}, {"role": "user", "content": "two"},
                                 {"role": "assistant", "content": "aaa"}]
    assert saved["sampling"]["max_tokens"] == 3
    chat.reset()
    assert chat.history == [] and chat.transcript == [] and chat.messages == [{"role": "system", "content": "sys"}]
    with pytest.raises(ConfigError, match="does not exist"):
        chat.save(tmp_path / "missing" / "chat.json")


def test_a_partial_reply_is_kept_when_the_caller_stops_early():
    chat = session("a", max_tokens=8)
    stream = chat.stream_reply("hi")
    first = next(stream)
    stream.close()
    assert chat.history[-1] == {"role": "assistant", "content": first.strip()}


def test_a_model_without_chat_tokens_is_refused():
    tokenizer = load_tokenizer("byte")
    gen = Generator(model=pinned_model(tokenizer, 97), tokenizer=tokenizer, device=torch.device("cpu"),
                    checkpoint=None)
    with pytest.raises(ConfigError, match="not fine-tuned on conversations"):
        ChatSession(gen, default_template(), sampling=SamplingConfig(max_tokens=8))


def test_max_tokens_must_leave_room():
    with pytest.raises(ConfigError, match="--max-tokens must be in 1..63"):
        session("a", context=64, max_tokens=64)
