"""`vesper serve` through the official `openai` client and raw HTTP: answers, streaming, metadata, refusals."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

openai = pytest.importorskip("openai")

from tests.serve.conftest import CONTEXT, make_app, running  # noqa: E402
from vesper_cli.engine.generation import SamplingConfig  # noqa: E402


def client(url: str, key: str = "unused") -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def test_completion_non_streaming(server):
    url, _ = server
    out = client(url).completions.create(model="tiny-run", prompt="the cat", max_tokens=12, temperature=0)
    assert out.id.startswith("cmpl-") and out.object == "text_completion" and out.model == "tiny-run"
    assert out.created > 0 and len(out.choices) == 1
    choice = out.choices[0]
    assert choice.index == 0 and choice.finish_reason in ("length", "stop") and choice.text
    assert out.usage.prompt_tokens == 2  # word tokenizer: one token per word
    assert out.usage.completion_tokens == 12 and out.usage.total_tokens == 14


def test_greedy_equals_vesper_generate(server, tiny_run, cli):
    url, _ = server
    out = client(url).completions.create(model="tiny-run", prompt="the cat", max_tokens=24, temperature=0)
    code, stdout, err = cli("generate", "--model", tiny_run, "--prompt", "the cat", "--temperature", "0",
                            "--max-tokens", "24")
    assert code == 0, err
    assert stdout == "the cat" + out.choices[0].text + "\n"


def test_streaming_matches_non_streaming(server):
    url, _ = server
    api = client(url)
    whole = api.completions.create(model="tiny-run", prompt="the red", max_tokens=20, temperature=0)
    chunks = list(api.completions.create(model="tiny-run", prompt="the red", max_tokens=20, temperature=0,
                                         stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert len([c for c in chunks if c.choices]) >= 3  # it streamed in pieces
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 20


def test_seed_repeats_and_choice_zero_equals_generate_with_that_seed(server, tiny_generator):
    url, _ = server
    api = client(url)
    kwargs = dict(model="tiny-run", prompt="the", max_tokens=16, temperature=1.0, seed=7, n=3)
    first, second = api.completions.create(**kwargs), api.completions.create(**kwargs)
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in second.choices]
    assert [c.index for c in first.choices] == [0, 1, 2] and len(set(texts)) > 1
    alone = "".join(tiny_generator.stream("the", SamplingConfig(max_tokens=16, temperature=1.0, seed=7)))
    assert texts[0] == alone


def test_stop_string_cuts_and_says_stop(server):
    url, _ = server
    api = client(url)
    kwargs = dict(model="tiny-run", prompt="the cat", max_tokens=30, temperature=1.0, seed=3)
    whole = api.completions.create(**kwargs)
    text = whole.choices[0].text
    words = text.split()
    assert len(set(words)) >= 4, text
    stop = words[len(words) // 2]
    expected = text[:text.find(stop)].rstrip()
    cut = api.completions.create(**kwargs, stop=[stop, "zebra"])
    assert cut.choices[0].text == expected and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < whole.usage.completion_tokens
    streamed = api.completions.create(**kwargs, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


def test_max_tokens_is_capped_by_the_context(server):
    url, _ = server
    prompt = "the cat " * 45  # 90 tokens
    out = client(url).completions.create(model="tiny-run", prompt=prompt, max_tokens=500, temperature=0)
    assert out.usage.prompt_tokens == 90
    assert out.usage.completion_tokens == CONTEXT - 90 and out.choices[0].finish_reason == "length"


def test_models_and_health(server):
    url, _ = server
    models = client(url).models.list()
    assert [m.id for m in models.data] == ["tiny-run"]
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny-run" and health["max_batch_size"] == 4


def _post(url: str, path: str, body, headers: dict | None = None) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{url}{path}", content=content, timeout=60,
                      headers={"content-type": "application/json", **(headers or {})})


BAD_REQUESTS = [
    ("/v1/completions", b'{"model": "tiny-run", "prompt": "the', 400, None),  # malformed JSON
    ("/v1/completions", b"\xff\xfe", 400, None),
    ("/v1/completions", [1, 2], 400, None),
    ("/v1/completions", {"prompt": "the"}, 400, "model"),
    ("/v1/completions", {"model": "tiny-run"}, 400, "prompt"),
    ("/v1/completions", {"model": "tiny-run", "prompt": "the", "max_tokens": "5"}, 400, "max_tokens"),
    ("/v1/completions", {"model": "tiny-run", "prompt": "the", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"model": "tiny-run", "prompt": "the", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"model": "tiny-run", "prompt": "the", "temperature": 9}, 400, "temperature"),
    ("/v1/completions", {"model": "tiny-run", "prompt": "the", "n": True}, 400, "n"),
    ("/v1/completions", {"model": "tiny-run", "prompt": "the", "n": 5}, 400, "n"),  # more than the batch holds
    ("/v1/completions", {"model": "tiny-run", "prompt": "the", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", b'{"model": "tiny-run", "prompt": "the", "temperature": NaN}', 400, "temperature"),
    ("/v1/completions", b'{"model": "tiny-run", "prompt": "the", "repetition_penalty": Infinity}', 400,
     "repetition_penalty"),
    ("/v1/completions", {"model": "tiny-run", "prompt": "the", "seed": 2**70}, 400, "seed"),
    ("/v1/completions", {"model": "tiny-run", "prompt": ["the"] * 5}, 400, "prompt"),
    ("/v1/completions", {"model": "tiny-run", "prompt": "the " * 3_000_000}, 413, None),
    ("/v1/completions", {"model": "tiny-run", "prompt": "the", "stop": [""]}, 400, "stop"),
    ("/v1/completions", {"model": "tiny-run", "prompt": "the", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/completions", {"model": "tiny-run", "prompt": "the", "logprobs": 2}, 400, "logprobs"),
    ("/v1/completions", {"model": "tiny-run", "prompt": "the", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"model": "tiny-run", "prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"model": "tiny-run", "prompt": []}, 400, "prompt"),
    ("/v1/completions", {"model": "tiny-run", "prompt": [1, 2, 3]}, 400, "prompt"),
    ("/v1/completions", {"model": "tiny-run", "prompt": "the " * CONTEXT}, 400, "prompt"),  # oversized
    ("/v1/completions", {"model": "gpt-4", "prompt": "the"}, 404, "model"),
    ("/v1/chat/completions", {"model": "tiny-run", "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": "tiny-run", "messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"model": "tiny-run", "messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "messages.0.role"),
    ("/v1/chat/completions", {"model": "tiny-run", "messages": [{"role": "user", "content": 3}]}, 400, None),
    ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ("/v1/nothing", {}, 404, None),
]


def test_bad_requests_get_openai_shaped_4xx_and_the_server_keeps_answering(server):
    url, _ = server
    for path, body, status, param in BAD_REQUESTS:
        response = _post(url, path, body)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], error
        if param is not None:
            assert error["param"] == param, (body, error)
    assert httpx.get(f"{url}/v1/completions").status_code == 405
    ok = client(url).completions.create(model="tiny-run", prompt="the", max_tokens=3, seed=-5)
    assert ok.usage.completion_tokens == 3


def test_the_openai_client_raises_its_own_errors(server):
    url, _ = server
    api = client(url)
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="other", prompt="the", max_tokens=3)
    with pytest.raises(openai.BadRequestError) as caught:
        api.completions.create(model="tiny-run", prompt="cat " * (CONTEXT + 5), max_tokens=3)
    assert caught.value.code == "context_length_exceeded"


def test_a_burst_of_concurrent_and_malformed_requests(server):
    url, app = server
    api = client(url)
    before = app.state.scheduler.stats["max_rows_in_step"]

    def good(i: int):
        return api.completions.create(model="tiny-run", prompt="the cat", max_tokens=24, temperature=0)

    def bad(i: int):
        return _post(url, "/v1/completions", b'{"model": 1').status_code

    def streamed(i: int) -> str:
        chunks = api.chat.completions.create(model="tiny-run", messages=[{"role": "user", "content": "the cat"}],
                                             max_tokens=10, seed=i, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks)

    with ThreadPoolExecutor(max_workers=16) as pool:
        goods = [pool.submit(good, i) for i in range(10)]
        bads = [pool.submit(bad, i) for i in range(6)]
        streams = [pool.submit(streamed, i) for i in range(4)]
        answers = [f.result() for f in goods]
        statuses = [f.result() for f in bads]
        texts_streamed = [f.result() for f in streams]
    assert statuses == [400] * 6
    assert all(isinstance(t, str) for t in texts_streamed)
    texts = {a.choices[0].text for a in answers}
    assert len(texts) == 1  # batched greedy rows equal each other
    assert all(a.usage.completion_tokens == 24 for a in answers)
    assert max(before, app.state.scheduler.stats["max_rows_in_step"]) > 1  # requests shared decode steps
    assert httpx.get(f"{url}/health").json()["active_rows"] == 0


def test_api_key(tiny_generator):
    with running(make_app(tiny_generator, api_key="s3cret")) as url:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret"}):
            r = _post(url, "/v1/completions", {"model": "tiny-run", "prompt": "the", "max_tokens": 2}, headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/v1/models").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").models.list()
        out = client(url, "s3cret").completions.create(model="tiny-run", prompt="the", max_tokens=2)
        assert out.usage.completion_tokens == 2
        assert httpx.get(f"{url}/health").status_code == 200  # health needs no key


def test_serving_in_bf16(tiny_run):
    from vesper_cli.serve.loading import load_serving_generator

    generator = load_serving_generator(tiny_run, dtype="bf16", device="cpu")
    assert str(generator.model.embeddings.weight.dtype) == "torch.bfloat16"
    with running(make_app(generator)) as url:
        out = client(url).completions.create(model="tiny-run", prompt="the cat", max_tokens=6, temperature=0)
        assert out.usage.completion_tokens == 6 and out.choices[0].finish_reason == "length"
        streamed = client(url).completions.create(model="tiny-run", prompt="the cat", max_tokens=6, temperature=0,
                                                  stream=True)
        assert "".join(c.choices[0].text for c in streamed) == out.choices[0].text
