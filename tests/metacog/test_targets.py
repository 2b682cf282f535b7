import torch

from vesper_metacog import compute_targets

V = 20


def logits_with_top(tops, probs=None, V=V):
    """(1, T, V) logits whose argmax at t is tops[t]; ``probs`` sets a confident peak."""
    logits = torch.zeros(1, len(tops), V)
    for t, tok in enumerate(tops):
        logits[0, t, tok] = 10.0 if probs is None or probs[t] else 0.5
    return logits


def test_confidence_is_top1_correctness():
    logits = logits_with_top([1, 2, 3, 4])
    labels = torch.tensor([[1, 5, 3, 6]])
    targets = compute_targets(logits, labels, eos_id=None, horizon=1)
    assert targets.confidence.tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_termination_when_eos_within_horizon():
    eos = 0
    labels = torch.tensor([[5, 5, 5, 5, eos, 5, 5, 5]])
    targets = compute_targets(logits_with_top([1] * 8), labels, eos_id=eos, horizon=3)
    # label positions t..t+2 contain the eos at index 4 for t = 2, 3, 4
    assert targets.termination.tolist() == [[0, 0, 1, 1, 1, 0, 0, 0]]
    assert compute_targets(logits_with_top([1] * 8), labels, eos_id=None).termination.sum() == 0


def test_factual_error_when_true_token_outside_topk():
    logits = torch.arange(V, dtype=torch.float32).repeat(1, 2, 1)  # token 19 best, 0 worst
    labels = torch.tensor([[0, 15]])  # rank 20 (outside top-5) and rank 5 (inside)
    targets = compute_targets(logits, labels, eos_id=None, horizon=1, topk=5)
    assert targets.errors[0, :, 0].tolist() == [1.0, 0.0]
    content = torch.zeros(V, dtype=torch.bool)
    restricted = compute_targets(logits, labels, eos_id=None, horizon=1, topk=5, content_mask=content)
    assert restricted.errors[0, :, 0].sum() == 0


def test_logical_error_when_confident_and_wrong():
    logits = logits_with_top([1, 1, 1], probs=[True, False, True])  # peak prob ~1 / ~0.08 / ~1
    labels = torch.tensor([[2, 2, 1]])
    targets = compute_targets(logits, labels, eos_id=None, horizon=1)
    # confident & wrong / unsure & wrong / confident & right
    assert targets.errors[0, :, 1].tolist() == [1.0, 0.0, 0.0]


def test_incomplete_in_last_horizon_without_eos():
    eos = 0
    logits = logits_with_top([1] * 6)
    cut = compute_targets(logits, torch.tensor([[5, 5, 5, 5, 5, 5]]), eos_id=eos, horizon=3)
    assert cut.errors[0, :, 2].tolist() == [0, 0, 0, 1, 1, 1]
    ended = compute_targets(logits, torch.tensor([[5, 5, 5, 5, eos, 5]]), eos_id=eos, horizon=3)
    assert ended.errors[0, :, 2].tolist() == [0, 0, 0, 0, 0, 1]  # the eos finishes 3 and 4


def test_ignore_index_masks_targets():
    logits = logits_with_top([1, 1])
    targets = compute_targets(logits, torch.tensor([[1, -100]]), eos_id=None, horizon=2)
    assert targets.mask.tolist() == [[True, False]]
    assert targets.confidence.tolist() == [[1.0, 0.0]]
    assert targets.errors[0, 1].sum() == 0


def test_chunked_rows_match_unchunked(monkeypatch):
    import vesper_metacog.targets as targets_module

    torch.manual_seed(0)
    logits = torch.randn(3, 7, V).to(torch.bfloat16)
    labels = torch.randint(0, V, (3, 7))
    full = compute_targets(logits, labels, eos_id=3, horizon=2, topk=4)
    monkeypatch.setattr(targets_module, "CHUNK_LOGITS_ELEMENTS", V * 2)  # two rows per chunk
    chunked = compute_targets(logits, labels, eos_id=3, horizon=2, topk=4)
    for a, b in zip((full.confidence, full.termination, full.errors),
                    (chunked.confidence, chunked.termination, chunked.errors)):
        assert torch.equal(a, b)
