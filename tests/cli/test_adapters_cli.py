"""`vesper train --init-from --finetune lora|flylora`, adapter checkpoints end to end, `vesper merge`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from vesper_cli.engine import TrainObserver, build_run_config, build_training, train
from vesper_cli.engine.trainer import Trainer
from vesper_core.checkpoint import file_sha256, read_checkpoint
from vesper_core.layers.adapters import base_state_dict

SMALL = dict(tokenizer="byte", seq_len=16, batch_size=4, dtype="f32", log_every=1, device="cpu")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A nano model trained for a few steps on project-written text, and a held-out text it never saw."""
    root = tmp_path_factory.mktemp("pretrained")
    words = ["river", "stone", "garden", "window", "candle", "harbour", "meadow"]
    text = root / "train.txt"
    text.write_text("\n".join(f"the {words[i % 7]} is near the {words[(i * 3) % 7]} at line {i % 9}."
                              for i in range(200)) + "\n", encoding="utf-8")
    unseen = root / "unseen.txt"
    unseen.write_text("\n".join(f"a {words[(i * 5) % 7]} and a {words[i % 7]} walk home." for i in range(120)) + "\n",
                      encoding="utf-8")
    result = train(build_run_config({**SMALL, "model_size": "nano", "dataset": str(text), "max_steps": 4,
                                     "output_dir": str(root / "base")}))
    return result.final_checkpoint, unseen


def finetune_config(base, data, out, **overrides):
    flags = {**SMALL, "dataset": str(data), "init_from": str(base), "output_dir": str(out), "finetune": "lora",
             "lora_rank": 4, "lr": 1e-2, **overrides}
    return build_run_config({k: v for k, v in flags.items() if v is not None})


@pytest.mark.parametrize("kind", ["lora", "flylora"])
def test_adapter_run_trains_only_adapters_and_saves_only_them(pretrained, tmp_path, kind):
    base, unseen = pretrained
    base_sha = file_sha256(base)
    run, _ = build_training(finetune_config(base, unseen, tmp_path / kind, finetune=kind, max_steps=3), TrainObserver())
    result = Trainer(run).fit()
    # the frozen base in memory is bit-identical to the file it came from
    in_file = read_checkpoint(base).state_dict
    after = base_state_dict(run.model)
    assert after.keys() == in_file.keys() and all(torch.equal(after[k], in_file[k]) for k in in_file)
    assert file_sha256(base) == base_sha
    saved = load_file(str(result.final_checkpoint))
    assert saved and all(k.endswith((".lora_A", ".lora_B")) for k in saved)
    assert result.final_checkpoint.stat().st_size < base.stat().st_size / 3
    ckpt = read_checkpoint(result.final_checkpoint)
    assert ckpt.adapter.config.kind == kind and ckpt.adapter.base_sha256 == base_sha
    start = json.loads((tmp_path / kind / "events.jsonl").read_text().splitlines()[0])
    assert start["trainable_params"] == run.adapters.num_trainable
    assert 0 < start["trainable_share"] < 0.2
    assert any("trainable of" in note for note in run.notes)


def test_train_cli_reports_trainable_share_and_generate_loads_the_adapter(pretrained, tmp_path, cli):
    base, unseen = pretrained
    code, _, err = cli("train", "--dataset", unseen, "--tokenizer", "byte", "--seq-len", 16, "--batch-size", 4,
                       "--dtype", "f32", "--device", "cpu", "--max-steps", 2, "--init-from", base,
                       "--finetune", "flylora", "--lora-rank", 4, "--lora-targets", "q_proj,v_proj",
                       "--output-dir", tmp_path / "run")
    assert code == 0, err
    assert "flylora adapters (rank 4, alpha 16) on 4 projections" in err and "trainable of" in err
    code, out, err = cli("generate", "--model", tmp_path / "run" / "checkpoint-final.safetensors",
                         "--prompt", "the river", "--max-tokens", 5, "--temperature", 0)
    assert code == 0, err
    assert out.startswith("the river")


def test_lora_run_resumes_exactly(pretrained, tmp_path):
    base, unseen = pretrained
    full = train(finetune_config(base, unseen, tmp_path / "full", max_steps=6, save_every=3))
    resumed = train(finetune_config(base, unseen, tmp_path / "resumed", max_steps=6, save_every=3, init_from=None,
                                    resume=str(tmp_path / "full" / "checkpoint-3.safetensors")))
    assert resumed.steps == 6
    a, b = load_file(str(full.final_checkpoint)), load_file(str(resumed.final_checkpoint))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], load_file(str(tmp_path / "full" / "checkpoint-3.safetensors"))[k]) for k in a)


def test_merge_cli_writes_a_plain_checkpoint_with_the_adapted_logits(pretrained, tmp_path, cli):
    base, unseen = pretrained
    result = train(finetune_config(base, unseen, tmp_path / "run", max_steps=3, finetune="flylora"))
    out = tmp_path / "merged" / "model.safetensors"
    code, stdout, err = cli("merge", "--model", result.final_checkpoint, "--output", out)
    assert code == 0, err
    assert stdout.strip() == str(out)
    merged, adapted = read_checkpoint(out), read_checkpoint(result.final_checkpoint)
    assert not merged.is_adapter and merged.meta("step") == 3
    assert (tmp_path / "merged" / "tokenizer.json").is_file()
    ids = torch.randint(0, merged.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (merged.build_model().eval()(ids).logits - adapted.build_model().eval()(ids).logits).abs().max()
    assert diff <= 1e-5
    before = out.read_bytes()
    code, _, err = cli("merge", "--model", result.final_checkpoint, "--output", out)
    assert code == 1 and "already exists; pass --overwrite" in err and out.read_bytes() == before
    code, _, err = cli("merge", "--model", result.final_checkpoint, "--output", out, "--overwrite")
    assert code == 0, err
    code, _, err = cli("merge", "--model", base, "--output", tmp_path / "x.safetensors")
    assert code == 1 and "plain checkpoint" in err and not (tmp_path / "x.safetensors").exists()


def test_adapter_mistakes_are_one_line_errors(pretrained, tmp_path, cli):
    base, unseen = pretrained
    common = ("--dataset", unseen, "--tokenizer", "byte", "--seq-len", 16, "--batch-size", 4, "--dtype", "f32",
              "--device", "cpu", "--max-steps", 2)
    code, _, err = cli("train", *common, "--finetune", "lora", "--output-dir", tmp_path / "a")
    assert code == 1 and "pass --init-from CKPT" in err and not (tmp_path / "a").exists()
    code, _, err = cli("train", *common, "--init-from", base, "--finetune", "lora", "--lora-targets", "qkv",
                       "--output-dir", tmp_path / "b")
    assert code == 1 and "'qkv' matches no adaptable projection" in err and not (tmp_path / "b").exists()
    code, _, err = cli("train", *common, "--init-from", base, "--finetune", "lora", "--sparse-aware",
                       "--sparse-params", "*.lora_*", "--output-dir", tmp_path / "c")
    assert code == 1 and "start at exactly zero" in err
    routed = train(finetune_config(base, unseen, tmp_path / "routed", max_steps=1, finetune="flylora",
                                   flylora_top_k=2))
    code, _, err = cli("merge", "--model", routed.final_checkpoint, "--output", tmp_path / "m.safetensors")
    assert code == 1 and "top-k routing" in err and not (tmp_path / "m.safetensors").exists()
    # the base moved away: loading the adapter checkpoint says which file is missing
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    copy = shutil.copy(routed.final_checkpoint, moved / "adapter.safetensors")
    shutil.move(str(base), str(base) + ".away")
    try:
        code, _, err = cli("generate", "--model", copy, "--prompt", "the", "--max-tokens", 2,
                           "--tokenizer", tmp_path / "routed" / "tokenizer.json")
    finally:
        shutil.move(str(base) + ".away", str(base))
    assert code == 1 and "needs its base model" in err and len(err.strip().splitlines()) == 2  # + the debug hint


@pytest.mark.parametrize("kind", ["lora", "flylora"])
def test_adapters_on_unseen_chat_data_with_a_grown_vocabulary(pretrained, tmp_path, cli, kind):
    """Chat data adds the template's special tokens: the grown rows stay frozen, the adapter file records the
    growth, and it loads, generates and merges without the run folder's help."""
    from tests.data.chat_data import write_chat

    base, _ = pretrained
    chat = write_chat(tmp_path / "chat.jsonl", 24, seed=5)
    result = train(finetune_config(base, chat, tmp_path / "run", finetune=kind, seq_len=96, max_steps=3))
    setup, _ = build_training(finetune_config(base, chat, tmp_path / "notes-run", finetune=kind, seq_len=96,
                                              max_steps=3), TrainObserver())
    warning = [n for n in setup.notes if n.startswith("warning: the ") and "new token rows" in n]
    assert len(warning) == 1 and "<|im_end|>" in warning[0] and "--finetune full" in warning[0]
    ckpt = read_checkpoint(result.final_checkpoint)
    plain = read_checkpoint(base)
    assert ckpt.config.vocab_size > plain.config.vocab_size  # <|im_start|>, <|im_end|> added
    grown = ckpt.adapter.base_state_dict["embeddings.weight"]
    assert torch.equal(grown[:plain.config.vocab_size], plain.state_dict["embeddings.weight"])
    assert set(load_file(str(result.final_checkpoint))) == set(ckpt.adapter.state_dict)  # no embedding rows saved
    out = tmp_path / "merged.safetensors"
    code, _, err = cli("merge", "--model", result.final_checkpoint, "--output", out)
    assert code == 0, err
    from vesper_data.chat import CHECKPOINT_KEY

    merged_meta = read_checkpoint(out).metadata
    assert merged_meta[CHECKPOINT_KEY] == ckpt.metadata[CHECKPOINT_KEY]  # the chat template travels
    assert "base_sha256" not in merged_meta and merged_meta["merged_base_sha256"] == ckpt.adapter.base_sha256
    ids = torch.randint(0, ckpt.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (read_checkpoint(out).build_model().eval()(ids).logits - ckpt.build_model().eval()(ids).logits)
    assert diff.abs().max() <= 1e-5
    code, outp, err = cli("generate", "--model", result.final_checkpoint, "--prompt", "What is 2 plus 3?",
                          "--max-tokens", 4, "--temperature", 0)
    assert code == 0, err
