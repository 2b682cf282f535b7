"""/v1/chat/completions: the checkpoint's chat template, the end-of-turn token, streaming, the 501 without chat."""

from __future__ import annotations

import httpx
import pytest
import torch

openai = pytest.importorskip("openai")

from tests.serve.conftest import make_app, running  # noqa: E402
from tests.serve.test_api import client  # noqa: E402
from vesper_cli.engine.generation import SamplingConfig  # noqa: E402
from vesper_cli.serve.loading import ChatPrompts, load_chat_prompts  # noqa: E402
from vesper_cli.serve.scheduler import Job, RowSpec, Scheduler  # noqa: E402

MESSAGES = [{"role": "system", "content": "the cat"}, {"role": "user", "content": "sees the red house"}]


def test_chat_non_streaming_and_streaming_agree(server, tiny_generator):
    url, _ = server
    api = client(url)
    out = api.chat.completions.create(model="tiny-run", messages=MESSAGES, max_tokens=12, temperature=0)
    assert out.id.startswith("chatcmpl-") and out.object == "chat.completion" and out.model == "tiny-run"
    message = out.choices[0].message
    assert message.role == "assistant" and isinstance(message.content, str)
    assert out.choices[0].finish_reason in ("stop", "length")
    prompt_ids = load_chat_prompts(tiny_generator, None).encode(MESSAGES)
    assert out.usage.prompt_tokens == len(prompt_ids)

    chunks = list(api.chat.completions.create(model="tiny-run", messages=MESSAGES, max_tokens=12, temperature=0,
                                              stream=True))
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == message.content
    assert chunks[-1].choices[0].finish_reason == out.choices[0].finish_reason


def test_chat_prompt_is_the_template_encoding_and_greedy_matches_the_engine(server, tiny_generator):
    url, _ = server
    chat = load_chat_prompts(tiny_generator, None)
    assert chat.has_special_tokens and chat.template.name == "chatml"
    end_id = tiny_generator.tokenizer.tokenizer.token_to_id("<|im_end|>")
    assert chat.stop_ids == (end_id,) and chat.stop_strings == ()
    ids = chat.encode(MESSAGES)
    assert ids[0] == tiny_generator.tokenizer.tokenizer.token_to_id("<|im_start|>")
    out = client(url).chat.completions.create(model="tiny-run", messages=MESSAGES, max_tokens=10, temperature=0)
    # the engine's greedy continuation of the same ids, cut at the end-of-turn token
    from vesper_core.generation import generate_tokens

    tokens = [int(t[0]) for t in generate_tokens(tiny_generator.model, torch.tensor([ids]), max_new_tokens=10,
                                                 temperature=0)]
    if end_id in tokens:
        tokens = tokens[:tokens.index(end_id)]
    assert out.choices[0].message.content == tiny_generator.tokenizer.decode(tokens).rstrip()


def test_end_of_turn_token_stops_a_row(tiny_generator):
    from vesper_core.generation import generate_tokens

    prompt = [1, 2, 3]
    greedy = [int(t[0]) for t in generate_tokens(tiny_generator.model, torch.tensor([prompt]), max_new_tokens=8,
                                                 temperature=0)]
    stop = greedy[3]
    events: list = []
    scheduler = Scheduler(tiny_generator, max_batch_size=1)
    scheduler.submit(Job(rows=[RowSpec(index=0, prompt_ids=prompt, stop_ids=(stop,),
                                       sampling=SamplingConfig(max_tokens=8, temperature=0))], emit=events.append))
    scheduler.start()
    try:
        import time

        deadline = time.monotonic() + 30
        while not any(e.finish_reason for e in events) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        scheduler.stop()
    end = next(e for e in events if e.finish_reason)
    assert end.finish_reason == "stop" and end.completion_tokens == greedy.index(stop) + 1
    text = "".join(e.piece for e in events)
    assert text == tiny_generator.tokenizer.decode(greedy[:greedy.index(stop)]).rstrip()


def test_a_tokenizer_without_the_special_tokens_gets_a_stop_string(tiny_generator):
    chat = load_chat_prompts(tiny_generator, None)
    plain = ChatPrompts(template=chat.template, tokenizer=tiny_generator.tokenizer, has_special_tokens=False)
    assert plain.stop_strings == ("<|im_end|>",) and plain.stop_ids == ()
    rendered = chat.template.render(MESSAGES, add_generation_prompt=True)
    assert plain.encode(MESSAGES) == tiny_generator.tokenizer.encode(rendered)


def test_without_chat_the_route_answers_501(tiny_generator):
    with running(make_app(tiny_generator, chat=None)) as url:
        r = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                       json={"model": "tiny-run", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 501 and r.json()["error"]["code"] == "chat_unavailable"
        assert httpx.post(f"{url}/v1/completions", json={"model": "tiny-run", "prompt": "the", "max_tokens": 2},
                          timeout=30).status_code == 200
