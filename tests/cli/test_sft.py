"""Fine-tuning on conversations end to end: --init-from (weights loaded, optimizer fresh, embedding grown and
recorded), the chat template recorded in checkpoints, bad records counted, held-out loss with the same mask,
exact resume on chat data, and the one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.data.chat_data import write_chat
from vesper_cli.engine.evaluation import evaluate
from vesper_cli.engine.observer import TrainObserver
from vesper_cli.engine.run_config import build_run_config
from vesper_cli.engine.trainer import build_training, train
from vesper_core.checkpoint import read_checkpoint
from vesper_core.distributed import DistInfo
from vesper_data.chat import default_template, load_chat_template
from vesper_data.chat.data import open_chat_windows
from vesper_data.tokenizers import VesperTokenizer

SMALL = dict(model_size="nano", seq_len=96, batch_size=4, dtype="f32", log_every=1, save_every=0)
TINY = dict(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64, flylora_rank=4)  # the base model's shape


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A nano model pretrained a few steps on text with the byte tokenizer (257 ids)."""
    root = tmp_path_factory.mktemp("base")
    text = root / "text.txt"
    text.write_text("\n".join(f"line {i} says the sum of {i % 7} and {i % 5} is {i % 7 + i % 5}." for i in range(300)),
                    encoding="utf-8")
    cfg = build_run_config({**SMALL, "seq_len": 32, "tokenizer": "byte", "dataset": str(text),
                            "output_dir": str(root / "run"), "max_steps": 4, "save_every": 4})
    cfg.model.overrides = TINY
    train(cfg)
    return root / "run"


@pytest.fixture
def chat_file(tmp_path):
    return write_chat(tmp_path / "chat.jsonl", 40, bad=True, long_answer=200)


def _cfg(chat_file, out, **kw):
    return build_run_config({**SMALL, "dataset": str(chat_file), "output_dir": str(out), **kw})


def test_init_from_loads_weights_and_starts_fresh_unlike_resume(base_run, chat_file, tmp_path):
    base = read_checkpoint(base_run / "checkpoint-final.safetensors")
    run, state = build_training(_cfg(chat_file, tmp_path / "sft", init_from=str(base_run), max_steps=2),
                                TrainObserver())
    assert state is None and run.step == 0 and not run.optimizer.state
    assert run.model_config.vocab_size == 259 and base.config.vocab_size == 257
    assert run.cfg.model.model_size == "nano"
    emb = run.model.embeddings.weight.detach()
    assert torch.equal(emb[:257], base.state_dict["embeddings.weight"])
    assert torch.allclose(emb[257:], base.state_dict["embeddings.weight"].mean(0).expand(2, -1))
    loaded = run.model.export_state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in base.state_dict.items() if k != "embeddings.weight")
    assert run.tokenizer.tokenizer.token_to_id("<|im_end|>") == 258
    assert run.model_config.hidden_size == 32  # the checkpoint's architecture, not the --model-size preset

    text = base_run.parent / "text.txt"
    cfg = build_run_config({**SMALL, "seq_len": 32, "tokenizer": "byte", "dataset": str(text), "max_steps": 8,
                            "output_dir": str(tmp_path / "r"), "resume": str(base_run / "checkpoint-4.safetensors")})
    cfg.model.overrides = TINY
    resumed, resume_state = build_training(cfg, TrainObserver())
    resumed.checkpointer.restore(resumed, resume_state)
    assert resumed.step == 4 and resumed.optimizer.state  # resume continues the optimizer; init-from does not


def test_sft_run_records_template_growth_and_counts_bad_records(cli, base_run, chat_file, tmp_path):
    val = write_chat(tmp_path / "val.jsonl", 12, seed=7)
    code, out, err = cli("train", "--init-from", base_run, "--dataset", chat_file, "--val-dataset", val,
                         "--model-size", "nano", "--seq-len", 96, "--batch-size", 4, "--dtype", "f32",
                         "--max-steps", 3, "--save-every", 0, "--output-dir", tmp_path / "sft")
    assert code == 0, err
    assert "chat.jsonl: " in err and "skipped 6 of 47 conversations: 1 empty turn" in err
    assert "1 conversation(s) longer than --seq-len + 1 = 97 tokens skipped" in err
    assert "embedding grown from 257 to 259 rows" in err
    final = read_checkpoint(tmp_path / "sft" / "checkpoint-final.safetensors")
    assert final.meta("vocab_growth")["tokens"] == ["<|im_start|>", "<|im_end|>"]
    assert final.meta("init_from").endswith("checkpoint-final.safetensors")
    assert load_chat_template(tmp_path / "sft").same_as(default_template())
    saved = VesperTokenizer.from_file(tmp_path / "sft" / "tokenizer.json")
    assert saved.vocab_size == 259 and final.meta("tokenizer_sha256") == saved.sha256()

    # the held-out loss the run logged is the masked loss anyone recomputes from the checkpoint
    log = json.loads((tmp_path / "sft" / "training_log.json").read_text())
    logged = log["evals"][-1]["val_loss"]
    windows = open_chat_windows(str(val), saved, load_chat_template(final.path), 96)
    again = evaluate(final.build_model(), windows, batch_size=4, device=torch.device("cpu"),
                     autocast=lambda: torch.autocast("cpu", enabled=False), max_batches=50, dist_info=DistInfo())
    assert again["val_loss"] == pytest.approx(logged, rel=1e-6)


@pytest.mark.parametrize("source", ["file", "cache"])
def test_chat_resume_is_bit_identical(base_run, chat_file, tmp_path, source):
    extra = {}
    if source == "cache":
        from vesper_data.chat import add_chat_tokens
        from vesper_data.chat.cache import build_chat_cache

        tok = VesperTokenizer.from_file(base_run / "tokenizer.json")
        add_chat_tokens(tok, default_template())
        built = build_chat_cache([chat_file], tok, default_template(), tmp_path / "cache", name="chat")
        extra = {"cache": str(built.bin_path), "dataset": None}
    common = dict(init_from=str(base_run), max_steps=4, save_every=2, lr_schedule="cosine", **extra)
    full = train(_cfg(chat_file, tmp_path / "full", **common))
    resumed = train(_cfg(chat_file, tmp_path / "resumed", **{**common, "init_from": None},
                         resume=str(tmp_path / "full" / "checkpoint-2.safetensors")))
    a, b = load_file(str(full.final_checkpoint)), load_file(str(resumed.final_checkpoint))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_checkpoint(resumed.final_checkpoint).meta("vocab_growth")["to"] == 259


def test_train_on_prompt_puts_every_token_in_the_loss(base_run, chat_file, tmp_path):
    counts = {}
    for flag in (False, True):
        run, _ = build_training(_cfg(chat_file, tmp_path / f"p{flag}", init_from=str(base_run), max_steps=1,
                                     train_on_prompt=flag, shuffle=False), TrainObserver())
        ids, labels = next(iter(run.loader))
        counts[flag] = int((labels != -100).sum())
        assert counts[flag] > 0
    assert counts[True] > 2 * counts[False]


def test_refusals_are_one_line(cli, base_run, chat_file, tmp_path):
    code, _, err = cli("train", "--init-from", base_run, "--resume", base_run, "--dataset", chat_file,
                       "--output-dir", tmp_path / "x")
    assert code == 1 and err.splitlines()[0] == ("Error: give one of --init-from (a new run from a checkpoint's weights) "
                                                 "or --resume (continue a run exactly), not both")
    code, _, err = cli("train", "--init-from", tmp_path / "nope", "--dataset", chat_file, "--output-dir", tmp_path / "y")
    assert code == 1 and "--init-from" in err and "no such file" in err
    code, _, err = cli("train", "--init-from", base_run, "--dataset", chat_file, "--seq-len", 8, "--dtype", "f32",
                       "--output-dir", tmp_path / "z")
    assert code == 1 and "every conversation is longer than" in err and "Traceback" not in err
    assert not (tmp_path / "z").exists()
    code, _, err = cli("train", "--dataset", base_run.parent / "text.txt", "--tokenizer", "byte", "--train-on-prompt",
                       "--output-dir", tmp_path / "t")
    assert code == 1 and "--train-on-prompt applies to conversation data" in err
