"""Chat data: formats and bad records, the template's text and loss mask, Jinja templates from a tokenizer
folder, special tokens on every tokenizer kind, padded windows, the masked loss, the cache mask, streaming."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.data.chat_data import arithmetic_records, write_chat
from vesper_core.config import ModelConfig
from vesper_core.errors import CacheFormatError, ConfigError, DataError
from vesper_core.kernels.cross_entropy import IGNORE_INDEX
from vesper_core.model import VesperLM
from vesper_core.vocab import grow_vocabulary
from vesper_data.cache import TokenCache
from vesper_data.chat import add_chat_tokens, default_template, load_chat_template, normalize_record, read_conversations
from vesper_data.chat.cache import build_chat_cache, cache_examples
from vesper_data.chat.examples import ChatWindows, load_chat_examples
from vesper_data.chat.streaming import ChatStreamingLoader
from vesper_data.loader import BatchLoader, TokenWindows
from vesper_data.sources import detect_format
from vesper_data.tokenizers import byte_tokenizer, train_bpe

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]


@pytest.fixture
def tok():
    tokenizer = byte_tokenizer()
    add_chat_tokens(tokenizer, default_template())
    return tokenizer


# -- formats -----------------------------------------------------------------------------------------
def test_every_record_shape_normalises_to_messages():
    openai, sharegpt, alpaca, pair = arithmetic_records(4)
    assert [m["role"] for m in normalize_record(openai)] == ["system", "user", "assistant"]
    assert normalize_record(sharegpt)[0]["role"] == "user" and normalize_record(sharegpt)[1]["role"] == "assistant"
    user, answer = normalize_record(alpaca)
    assert user["content"].startswith("Add the two numbers.\n\n") and answer["content"] == alpaca["output"]
    assert normalize_record(pair) == [{"role": "user", "content": pair["user"]},
                                      {"role": "assistant", "content": pair["assistant"]}]
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                          {"role": "assistant", "content": "c"}]}
    assert normalize_record(parts)[0]["content"] == "ab"


def test_bad_records_are_counted_not_fatal(tmp_path):
    path = write_chat(tmp_path / "c.jsonl", 20, bad=True)
    conversations, skipped = read_conversations(path)
    good = list(conversations)
    assert len(good) == 20
    assert skipped.read == 26 and skipped.num_skipped == 6
    assert skipped.skipped == {"empty turn": 1, "unknown role": 1, "no assistant turn": 1, "invalid JSON": 1,
                               "not a JSON object": 1, "no conversation fields": 1}
    line = skipped.summary("c.jsonl")
    assert line.startswith("c.jsonl: skipped 6 of 26 conversations") and "\n" not in line
    assert "'tool'" in line  # the unknown role is named


def test_json_array_files_and_autodetection(tmp_path):
    array = tmp_path / "alpaca.json"
    array.write_text(json.dumps(arithmetic_records(8)[2::4]), encoding="utf-8")
    conversations, _ = read_conversations(array)
    assert len(list(conversations)) == 2
    assert detect_format(array) == "chat"
    assert detect_format(write_chat(tmp_path / "c.jsonl", 4)) == "chat"
    plain = tmp_path / "p.jsonl"
    plain.write_text('{"text": "hello"}\n', encoding="utf-8")
    assert detect_format(plain) == "jsonl"


@pytest.mark.parametrize("content,match", [(None, "not found"), (b"", "empty"), (b"\x00\x01\x02", "binary")])
def test_unreadable_file_is_one_data_error(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=match):
        read_conversations(path)


# -- the default template ----------------------------------------------------------------------------
def test_default_template_renders_chatml():
    text = default_template().render(CONVERSATION[1:3], add_generation_prompt=False)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    prompt = default_template().render(CONVERSATION[1:2], add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_encode_masks_everything_but_assistant_turns(tok):
    template = default_template()
    ids, labels = template.encode(tok, CONVERSATION)
    assert tok.decode(ids, skip_special_tokens=False) == template.render(CONVERSATION)
    trained = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert tok.decode(trained, skip_special_tokens=False) == "Hello!<|im_end|>4<|im_end|>"
    assert all(label in (i, IGNORE_INDEX) for i, label in zip(ids, labels))
    end = tok.tokenizer.token_to_id("<|im_end|>")
    assert labels.count(end) == 2  # the assistant's end-of-turn tokens are trained, the user's are not
    _, all_labels = template.encode(tok, CONVERSATION, train_on_prompt=True)
    assert all_labels == ids


def test_special_tokens_are_single_ids_on_byte_and_bpe_tokenizers(tok):
    bpe = train_bpe(["the cat sat on the mat " * 20], 300)
    before = bpe.vocab_size
    assert add_chat_tokens(bpe, default_template()) == ["<|im_start|>", "<|im_end|>"]
    assert bpe.vocab_size == before + 2 and add_chat_tokens(bpe, default_template()) == []
    for tokenizer in (tok, bpe):
        ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>")
        assert ids[0] == tokenizer.tokenizer.token_to_id("<|im_start|>") >= 256
        assert ids[-1] == tokenizer.tokenizer.token_to_id("<|im_end|>")
    with pytest.raises(ConfigError, match="lacks the chat template's special token"):
        default_template().encode(byte_tokenizer(), CONVERSATION)


# -- Jinja templates from a tokenizer folder ---------------------------------------------------------
LLAMA_LIKE = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
              " + m['content'] + '<|eot_id|>' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def _tokenizer_folder(tmp_path, template: str):
    folder = tmp_path / "tok"
    folder.mkdir()
    base = byte_tokenizer()
    base.add_special_tokens(["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    base.save(folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": template, "bos_token": "<|begin_of_text|>",
        "eos_token": {"content": "<|eot_id|>", "special": True}}), encoding="utf-8")
    return folder, base


def test_jinja_template_from_tokenizer_folder(tmp_path):
    folder, tokenizer = _tokenizer_folder(tmp_path, LLAMA_LIKE)
    template = load_chat_template(folder)
    assert template.end_of_turn == "<|eot_id|>" and template.bos_token == "<|begin_of_text|>"
    assert set(template.special_tokens) >= {"<|begin_of_text|>", "<|eot_id|>"}
    text = template.render(CONVERSATION[1:3])
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>")
    ids, labels = template.encode(tokenizer, CONVERSATION[1:3])
    trained = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained, skip_special_tokens=False) == "Hello!<|eot_id|>"
    assert load_chat_template(folder / "tokenizer_config.json").source == LLAMA_LIKE


def test_templates_that_cannot_be_masked_or_parsed_are_refused(tmp_path):
    folder, tokenizer = _tokenizer_folder(tmp_path, "{{ messages | length }}{% for m in messages %}{{ m['content'] }}"
                                                    "{% endfor %}")
    with pytest.raises(ConfigError, match="growing prefixes"):
        load_chat_template(folder).encode(tokenizer, CONVERSATION[1:3])
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid Jinja"):
        load_chat_template(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_chat_template(tmp_path / "missing")


# -- the embedding grows ------------------------------------------------------------------------------
def test_grow_vocabulary_appends_mean_rows():
    model = VesperLM(ModelConfig(vocab_size=20, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32))
    state = model.export_state_dict()
    grown, record = grow_vocabulary(state, 23)
    assert record == {"from": 20, "to": 23, "init": "mean of the existing rows"}
    emb = grown["embeddings.weight"]
    assert emb.shape == (23, 16) and torch.equal(emb[:20], state["embeddings.weight"])
    assert torch.allclose(emb[20:], state["embeddings.weight"].mean(0).expand(3, -1))
    bigger = VesperLM(ModelConfig(vocab_size=23, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32))
    bigger.load_exported_state_dict(grown)
    assert grow_vocabulary(state, 20)[1] is None


# -- windows and the masked loss ----------------------------------------------------------------------
def test_windows_pad_each_conversation_and_skip_the_too_long(tmp_path, tok):
    path = write_chat(tmp_path / "c.jsonl", 12, bad=True, long_answer=200)
    examples = load_chat_examples([str(path)], default_template(), tok)
    windows = ChatWindows(examples, 80, pad_id=tok.eos_id, source="c")
    assert len(examples) == 13 and windows.num_too_long == 1 and len(windows) == 12
    assert "1 conversation(s) longer than" in windows.notice("c.jsonl") and "skipped 6 of 19" in windows.notice("c")
    ids, labels = windows.get_batch([0, 1])
    assert ids.shape == labels.shape == (2, 80)
    tokens, mask = examples.example(int(windows.index[0]))
    n = len(tokens) - 1
    assert ids[0, :n].tolist() == tokens[:-1].tolist() and (ids[0, n:] == tok.eos_id).all()
    expected = [int(t) if m else IGNORE_INDEX for t, m in zip(tokens[1:], mask[1:])]
    assert labels[0, :n].tolist() == expected and (labels[0, n:] == IGNORE_INDEX).all()
    with pytest.raises(DataError, match="raise --seq-len"):
        ChatWindows(examples, 8)


def test_val_fraction_holds_out_the_last_conversations(tmp_path, tok):
    examples = load_chat_examples([str(write_chat(tmp_path / "c.jsonl", 10))], default_template(), tok)
    train, val = examples.split(0.2)
    assert len(train) == 8 and len(val) == 2
    assert np.array_equal(val.tokens, examples.tokens[int(examples.offsets[8]):])
    assert np.array_equal(val.example(1)[0], examples.example(9)[0]) and val.offsets[0] == 0
    with pytest.raises(DataError, match="holds out 0 of 10"):
        examples.split(0.05)


def test_masked_loss_equals_a_hand_computation(tmp_path, tok):
    examples = load_chat_examples([str(write_chat(tmp_path / "c.jsonl", 6))], default_template(), tok)
    windows = ChatWindows(examples, 64, pad_id=tok.eos_id)
    ids, labels = windows.get_batch([0, 1, 2])
    torch.manual_seed(0)
    model = VesperLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                                 intermediate_size=64)).eval()
    with torch.no_grad():
        out = model(ids, labels, loss_impl="standard")
        logits = model(ids).logits
    log_probs = F.log_softmax(logits.double(), dim=-1)
    terms = [-log_probs[b, t, labels[b, t]] for b in range(3) for t in range(64) if labels[b, t] != IGNORE_INDEX]
    answer_tokens = sum(int(examples.mask[int(examples.offsets[i]):int(examples.offsets[i + 1])].sum())
                        for i in windows.index[:3])
    assert len(terms) == answer_tokens > 0
    assert float(out.loss) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)
    # a conversation's loss does not depend on the rows beside it (no packing, causal attention over padding)
    with torch.no_grad():
        alone = model(ids[:1], labels[:1], loss_impl="standard", loss_reduction="sum")
    assert float(alone.loss) == pytest.approx(float(sum(t for t in terms[:int((labels[0] != IGNORE_INDEX).sum())])),
                                              rel=1e-5)


# -- the cache keeps the mask -------------------------------------------------------------------------
def test_chat_cache_round_trips_tokens_and_mask(tmp_path, tok):
    path = write_chat(tmp_path / "c.jsonl", 10, bad=True)
    warnings = []
    built = build_chat_cache([path], tok, default_template(), tmp_path / "cache", name="chat", on_warning=warnings.append)
    assert (tmp_path / "cache" / "chat.mask").stat().st_size == built.header.total_tokens
    assert len(warnings) == 1 and "skipped 6 of 16" in warnings[0]
    cache = TokenCache.open(built.bin_path)
    memory = load_chat_examples([str(path)], default_template(), tok)
    from_cache = cache_examples(cache)
    assert cache.is_chat and len(from_cache) == len(memory) == 10
    assert np.array_equal(np.asarray(from_cache.tokens), memory.tokens)
    assert np.array_equal(np.asarray(from_cache.mask), memory.mask)
    assert np.array_equal(np.asarray(from_cache.offsets), memory.offsets)
    a = ChatWindows(from_cache, 96).get_batch([0, 3, 9])
    b = ChatWindows(memory, 96).get_batch([0, 3, 9])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert len(TokenWindows(cache.tokens, 16)) > 0  # the token file is still an ordinary VSPR cache
    from vesper_data.cache import cache_info

    info = cache_info(built.bin_path)
    assert info["chat_template"] == "chatml" and info["mask"] == "chat.mask"
    assert sum(info["skipped_conversations"].values()) == 6
    (tmp_path / "cache" / "chat.mask").write_bytes(b"\x01" * 5)
    with pytest.raises(CacheFormatError, match="one mask byte each"):
        TokenCache.open(built.bin_path)
    (tmp_path / "cache" / "chat.mask").unlink()
    with pytest.raises(CacheFormatError, match="mask chat.mask is missing"):
        TokenCache.open(built.bin_path)


# -- streaming ----------------------------------------------------------------------------------------
def _rows(batches):
    return [tuple(row.tolist()) for ids, labels in batches for row in torch.cat([ids, labels], dim=1)]


def test_streaming_gives_the_in_memory_rows_and_resumes_exactly(tmp_path, tok):
    path = write_chat(tmp_path / "c.jsonl", 48, bad=True, long_answer=300)
    memory = ChatWindows(load_chat_examples([str(path)], default_template(), tok), 96, pad_id=tok.eos_id)
    unshuffled = ChatStreamingLoader(path, tok, default_template(), 96, 4, chunk_bytes=700, shuffle=False, prefetch=0)
    streamed = _rows(unshuffled)
    assert streamed == _rows([memory.get_batch(range(len(memory)))])[:len(streamed)]
    assert len(streamed) == 48 and unshuffled.num_too_long == 1 and unshuffled.skipped.num_skipped == 6

    def loader():
        return ChatStreamingLoader(path, tok, default_template(), 96, 4, chunk_bytes=700, seed=3)

    whole = loader()
    batches = whole.batches_forever()
    reference = _rows([next(batches) for _ in range(16)])  # crosses an epoch boundary (12 batches per epoch)
    first = loader()
    it = first.batches_forever()
    head = _rows([next(it) for _ in range(5)])
    state = json.loads(json.dumps(first.state_dict()))
    resumed = loader()
    resumed.load_state_dict(state)
    it2 = resumed.batches_forever()
    assert head + _rows([next(it2) for _ in range(11)]) == reference
    with pytest.raises(DataError, match="saved with --streaming"):
        BatchLoader(memory, 4).load_state_dict(state)
