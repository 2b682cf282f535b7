"""Hugging Face export: transformers loads the folder and reproduces Vesper's logits, greedy tokens and token ids."""

from __future__ import annotations

import json

import pytest
import torch

from export_helpers import TEXT, bpe_tokenizer, tiny_config, write_checkpoint
from vesper_cli.engine.export import export_checkpoint
from vesper_cli.engine.generation import SamplingConfig, load_generator
from vesper_core.checkpoint import read_checkpoint
from vesper_core.generation import generate
from vesper_data.tokenizers import byte_tokenizer

transformers = pytest.importorskip("transformers")

SAMPLES = ["the cat sees the red house", "Ünïcödé text 🙂 and <|endoftext|> inside", "  spaces\n\tand tabs  ",
           "numbers 0123456789, punctuation!?"]


def _export(tmp_path, tokenizer, **changes):
    ckpt = write_checkpoint(tmp_path / "run", tiny_config(tokenizer.vocab_size, **changes), tokenizer)
    result = export_checkpoint(ckpt, fmt="hf", output=tmp_path / "hf", verify=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(result.output), trust_remote_code=True).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(result.output), trust_remote_code=True)
    return ckpt, result.output, model, tok


def _check_round_trip(ckpt, model, hf_tok, tokenizer):
    vesper = read_checkpoint(ckpt).build_model().eval()
    for text in SAMPLES:  # the tokenizer: same ids, same text back
        ids = tokenizer.encode(text)
        assert hf_tok(text)["input_ids"] == ids
        assert hf_tok.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids)
    prompts = torch.tensor([tokenizer.encode(TEXT)[:40], tokenizer.encode(TEXT[7:])[:40]])
    with torch.no_grad():
        diff = (model(prompts).logits - vesper(prompts).logits).abs().max()
    assert diff <= 1e-4
    # greedy generation with transformers' KV cache == Vesper's KV-cache greedy decoding
    for prompt in prompts:
        expected = generate(vesper, prompt, max_new_tokens=16, temperature=0, eos_token_id=tokenizer.eos_id)
        out = model.generate(prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=16, do_sample=False)[0]
        assert out.tolist() == expected.tolist()[: len(out)]
        assert len(out) == len(expected) or out[-1] == tokenizer.eos_id


def test_byte_model_round_trip(tmp_path):
    tokenizer = byte_tokenizer()
    ckpt, folder, model, hf_tok = _export(tmp_path, tokenizer)
    _check_round_trip(ckpt, model, hf_tok, tokenizer)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_vesper.VesperForCausalLM"
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.eos_token_id == 256
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == 256
    assert model.lm_head.weight.data_ptr() == model.embeddings.weight.data_ptr()  # tied, as in Vesper
    assert "chat_template" not in json.loads((folder / "tokenizer_config.json").read_text())


def test_greedy_equals_vesper_generate_text(tmp_path):
    tokenizer = byte_tokenizer()
    ckpt, _, model, hf_tok = _export(tmp_path, tokenizer)
    greedy = SamplingConfig(max_tokens=20, temperature=0, stop_at_eos=False)
    text = "".join(load_generator(ckpt).stream("the cat", greedy))  # what `vesper generate --temperature 0` prints
    inputs = hf_tok("the cat", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=20, do_sample=False, eos_token_id=None)
    assert hf_tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).rstrip() == text


def test_left_padded_batch_matches_single_rows(tmp_path):
    tokenizer = byte_tokenizer()
    _, _, model, hf_tok = _export(tmp_path, tokenizer)
    hf_tok.padding_side = "left"
    texts = ["a dog likes", "the quiet river of the old man"]
    batch = hf_tok(texts, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False, eos_token_id=None)
    for row, text in zip(out, texts):
        single = hf_tok(text, return_tensors="pt")
        alone = model.generate(**single, max_new_tokens=6, do_sample=False, eos_token_id=None)[0]
        assert row[-6:].tolist() == alone[-6:].tolist()


@pytest.mark.slow
def test_bpe_model_round_trip(tmp_path):
    tokenizer = bpe_tokenizer()
    ckpt, _, model, hf_tok = _export(tmp_path, tokenizer, flylora_rank=0)
    _check_round_trip(ckpt, model, hf_tok, tokenizer)


@pytest.mark.slow
def test_moe_model_round_trip(tmp_path):
    tokenizer = bpe_tokenizer()
    ckpt, _, model, hf_tok = _export(tmp_path, tokenizer, moe_enabled=True, moe_num_experts=4, moe_top_k=2)
    _check_round_trip(ckpt, model, hf_tok, tokenizer)


def test_chat_template_recorded_in_the_checkpoint_is_exported(tmp_path):
    from vesper_core.checkpoint import save_weights
    from export_helpers import random_model

    tokenizer = byte_tokenizer()
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokenizer.tokenizer.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tokenizer.vocab_size = tokenizer.tokenizer.get_vocab_size(with_added_tokens=True)
    config = tiny_config(tokenizer.vocab_size)
    (tmp_path / "run").mkdir()
    ckpt = save_weights(tmp_path / "run" / "checkpoint-final.safetensors", random_model(config),
                        extra={"tokenizer_sha256": tokenizer.sha256(),
                               "chat_template": {"name": "chatml", "source": template, "end_of_turn": "<|im_end|>",
                                                 "special_tokens": ["<|im_start|>", "<|im_end|>"]}})
    tokenizer.save(tmp_path / "run" / "tokenizer.json")
    result = export_checkpoint(ckpt, fmt="hf", output=tmp_path / "hf", verify=False)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(result.output), trust_remote_code=True)
    messages = [{"role": "user", "content": "hi"}]
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert hf_tok(text)["input_ids"] == tokenizer.encode(text)
    assert hf_tok.convert_tokens_to_ids("<|im_end|>") == tokenizer.tokenizer.token_to_id("<|im_end|>")
