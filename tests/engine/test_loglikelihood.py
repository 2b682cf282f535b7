"""LikelihoodScorer against log-probabilities read off one plain forward pass."""

from __future__ import annotations

import math

import pytest
import torch

from vesper_core.errors import DataError
from vesper_cli.engine.loglikelihood import LikelihoodScorer
from tests.engine.conftest import make_generator, token_logprobs


def _scorer(gen, batch_size=8):
    return LikelihoodScorer(gen.model, gen.tokenizer, gen.device, batch_size=batch_size)


def test_continuation_logprob_matches_a_plain_forward_pass(tiny_gen):
    scorer = _scorer(tiny_gen)
    requests = [("the cat", " sat"), ("a", " much longer continuation here"), ("hello world", "!")]
    scored = scorer.loglikelihood(requests)
    for (context, continuation), result in zip(requests, scored):
        ctx = tiny_gen.tokenizer.encode(context)
        cont = tiny_gen.tokenizer.encode(continuation)
        reference = token_logprobs(tiny_gen.model, ctx + cont)[-len(cont):]
        assert result.num_tokens == len(cont)
        assert result.logprob == pytest.approx(sum(reference), abs=1e-4)


def test_batching_and_padding_do_not_change_scores(tiny_gen):
    requests = [("x" * n, " y" * (n % 3 + 1)) for n in range(1, 12)]
    one_by_one = _scorer(tiny_gen, batch_size=1).loglikelihood(requests)
    batched = _scorer(tiny_gen, batch_size=5).loglikelihood(requests)
    for a, b in zip(one_by_one, batched):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert a.is_greedy == b.is_greedy


def test_is_greedy_follows_the_argmax(tiny_gen):
    context_ids = tiny_gen.tokenizer.encode("the quick fox")
    with torch.no_grad():
        best = int(tiny_gen.model(torch.tensor([context_ids])).logits[0, -1].argmax())
    other = (best + 1) % 256
    scored = _scorer(tiny_gen).score_tokens([(context_ids, [best]), (context_ids, [other])])
    assert scored[0].is_greedy and not scored[1].is_greedy
    assert scored[0].logprob > scored[1].logprob


def test_trailing_space_of_the_context_moves_to_the_continuation(tiny_gen):
    scorer = _scorer(tiny_gen)
    assert scorer.split("the cat ", "sat") == scorer.split("the cat", " sat")


def test_empty_context_is_conditioned_on_end_of_text(tiny_gen):
    scorer = _scorer(tiny_gen)
    context, continuation = scorer.split("", "hi")
    assert context == [tiny_gen.tokenizer.eos_id]
    eos = tiny_gen.tokenizer.eos_id
    reference = sum(token_logprobs(tiny_gen.model, [eos, *continuation]))
    assert scorer.loglikelihood([("", "hi")])[0].logprob == pytest.approx(reference, abs=1e-4)


def test_empty_continuation_is_refused(tiny_gen):
    with pytest.raises(DataError, match="empty after tokenization"):
        _scorer(tiny_gen).split("the cat", "")


def test_rolling_scores_every_token_once_with_full_context():
    gen = make_generator(context=16)
    scorer = _scorer(gen, batch_size=3)
    text = "abcdefghijklmnopqrstuvwxyz0123456789"  # 36 tokens: chunks of 16, 16, 4
    ids = gen.tokenizer.encode(text)
    sequence = [gen.tokenizer.eos_id, *ids]
    result = scorer.rolling(text)
    assert result.num_tokens == len(ids)
    # the reference: chunk targets [0,16), [16,32), [32,36); the last chunk sees the 16 tokens before its end
    expected = sum(token_logprobs(gen.model, sequence[0:17]))
    expected += sum(token_logprobs(gen.model, sequence[16:33]))
    expected += sum(token_logprobs(gen.model, sequence[37 - 17:37])[-4:])
    assert result.logprob == pytest.approx(expected, abs=1e-3)
    assert math.isfinite(result.logprob) and result.logprob < 0


def test_long_context_keeps_its_last_window():
    gen = make_generator(context=16)
    scorer = _scorer(gen)
    context = gen.tokenizer.encode("z" * 40)
    continuation = gen.tokenizer.encode("ab")
    kept = (context + continuation)[-17:]
    expected = sum(token_logprobs(gen.model, kept)[-2:])
    assert scorer.score_tokens([(context, continuation)])[0].logprob == pytest.approx(expected, abs=1e-4)
