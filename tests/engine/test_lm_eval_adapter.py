"""lm-evaluation-harness drives a Vesper model offline: local task YAMLs over local JSONL files.

Every expected number comes from Vesper's own scorer / generator on the same model, so a request the
adapter mis-routes (wrong context split, wrong rolling windows, stop strings ignored) fails here.
"""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("lm_eval")

from vesper_core.checkpoint import save_weights  # noqa: E402
from vesper_cli.engine.eval_tasks import generate_answer  # noqa: E402
from vesper_cli.engine.loglikelihood import LikelihoodScorer  # noqa: E402

CONTEXTS = ["the cat", "a dog", "one two", "red sky"]
CHOICES = [" sat", " sat on the mat today", " ran", " z"]
DOCS = ["the cat sat on the mat.", "a quiet river runs by the old mill"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network: the datasets library must read the local files without asking the hub."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)


def _yaml(path, name, data_file, cache, body: str) -> None:
    path.write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data_file}\n"
                    f"  cache_dir: {cache}\ntest_split: test\n{body}", encoding="utf-8")


@pytest.fixture
def local_tasks(tmp_path, tiny_gen):
    """Three local tasks (multiple choice, generation, rolling perplexity) and the answers they should give."""
    scorer = LikelihoodScorer(tiny_gen.model, tiny_gen.tokenizer, tiny_gen.device)
    folder, cache = tmp_path / "tasks", tmp_path / "hf-cache"
    folder.mkdir()
    mc, raw_hits, norm_hits = [], 0, 0
    for i, context in enumerate(CONTEXTS):
        lls = [s.logprob for s in scorer.loglikelihood([(context, c) for c in CHOICES])]
        best_raw = max(range(4), key=lambda k: lls[k])
        best_norm = max(range(4), key=lambda k: lls[k] / len(CHOICES[k]))
        answer = best_raw if i % 2 == 0 else best_norm
        raw_hits += best_raw == answer
        norm_hits += best_norm == answer
        mc.append({"context": context, "choices": CHOICES, "answer": answer})
    (folder / "mc.jsonl").write_text("\n".join(map(json.dumps, mc)) + "\n")
    _yaml(folder / "mc.yaml", "local_mc", folder / "mc.jsonl", cache,
          'output_type: multiple_choice\ndoc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\n'
          'doc_to_target: "{{answer}}"\ntarget_delimiter: ""\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n')

    produced = generate_answer(tiny_gen, "the cat", max_tokens=6, stop=["\n"])
    gen_docs = [{"prompt": "the cat", "answer": produced}, {"prompt": "the cat", "answer": produced + "x"}]
    (folder / "gen.jsonl").write_text("\n".join(map(json.dumps, gen_docs)) + "\n")
    _yaml(folder / "gen.yaml", "local_gen", folder / "gen.jsonl", cache,
          'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\n'
          'target_delimiter: ""\ngeneration_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 6\n'
          'metric_list:\n  - metric: exact_match\n')

    (folder / "docs.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in DOCS) + "\n")
    _yaml(folder / "ppl.yaml", "local_ppl", folder / "docs.jsonl", cache,
          'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
          'metric_list:\n  - metric: bits_per_byte\n')
    total_ll = sum(scorer.rolling(d).logprob for d in DOCS)
    bits_per_byte = -total_ll / (sum(len(d.encode()) for d in DOCS) * math.log(2))
    return folder, {"local_mc": {"count": 4, "acc": raw_hits / 4, "acc_norm": norm_hits / 4},
                    "local_gen": {"count": 2, "exact_match": 0.5},
                    "local_ppl": {"count": 2, "bits_per_byte": bits_per_byte}}


def test_local_tasks_run_offline_through_the_adapter(tiny_gen, local_tasks):
    from vesper_cli.engine.lm_eval_adapter import VesperEvalLM, run_lm_eval

    folder, expected = local_tasks
    results = run_lm_eval(VesperEvalLM.from_generator(tiny_gen, batch_size=3), ["local_mc", "local_gen", "local_ppl"],
                          include_path=str(folder))
    assert set(results) == set(expected)
    for task, metrics in expected.items():
        assert set(results[task]) == set(metrics), task
        for name, value in metrics.items():
            assert results[task][name] == pytest.approx(value, abs=1e-6), (task, name)


def test_registered_model_type_loads_a_checkpoint(tiny_gen, local_tasks, tmp_path):
    """lm-eval's own entry point: simple_evaluate(model="vesper", model_args="model=CKPT")."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import vesper_cli.engine.lm_eval_adapter  # noqa: F401  (registers "vesper")

    folder, expected = local_tasks
    (tmp_path / "ckpt").mkdir()
    ckpt = save_weights(tmp_path / "ckpt" / "checkpoint-final.safetensors", tiny_gen.model)
    tiny_gen.tokenizer.save(ckpt.parent / "tokenizer.json")
    out = lm_eval.simple_evaluate(model="vesper", model_args=f"model={ckpt},batch_size=2,device=cpu",
                                  tasks=["local_mc"], bootstrap_iters=0,
                                  task_manager=TaskManager(include_path=str(folder), include_defaults=False))
    assert out["results"]["local_mc"]["acc,none"] == pytest.approx(expected["local_mc"]["acc"])


@pytest.mark.slow  # an unknown name is looked up among lm-eval's built-in tasks: indexing them takes ~10 s
def test_unknown_task_is_one_clear_error(tiny_gen, local_tasks):
    from vesper_core.errors import ConfigError
    from vesper_cli.engine.lm_eval_adapter import VesperEvalLM, run_lm_eval

    folder, _ = local_tasks
    lm = VesperEvalLM.from_generator(tiny_gen)
    with pytest.raises(ConfigError, match="unknown lm-eval task\\(s\\) no_such_task_xyz"):
        run_lm_eval(lm, ["no_such_task_xyz"], include_path=str(folder))


def test_apply_chat_template_renders_the_default_template(tiny_gen):
    from vesper_cli.engine.lm_eval_adapter import VesperEvalLM

    lm = VesperEvalLM.from_generator(tiny_gen)
    text = lm.apply_chat_template([{"role": "user", "content": "2+2?"}])
    assert text == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert "im_start" in lm.chat_template(True) and lm.chat_template(False) == ""
