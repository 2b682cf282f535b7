"""TokenWindows (shift, count) and BatchLoader (order, sharding, resume)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vesper_core.errors import DataError
from vesper_data.loader import BatchLoader, TokenWindows


def _windows(num_tokens: int = 101, seq_len: int = 4) -> TokenWindows:
    return TokenWindows(np.arange(num_tokens, dtype=np.uint32), seq_len)


def _ids(batches) -> list[int]:
    """Window index of every row (inputs start at window * seq_len)."""
    return [int(row[0]) // 4 for inputs, _ in batches for row in inputs]


def test_windows_shift_and_count():
    windows = _windows(101, 4)
    assert len(windows) == 25  # (101 - 1) // 4
    assert len(_windows(100, 4)) == 24  # the last window would need token 100
    for i in range(len(windows) - 1):
        inputs, labels = windows[i]
        assert inputs.dtype == labels.dtype == torch.int64 and inputs.shape == (4,)
        assert torch.equal(labels[:-1], inputs[1:])
        assert labels[-1] == windows[i + 1][0][0]
    inputs, labels = windows.get_batch([0, 3])
    assert inputs.tolist() == [[0, 1, 2, 3], [12, 13, 14, 15]] and labels[1].tolist() == [13, 14, 15, 16]


def test_windows_over_a_memmap(tmp_path):
    path = tmp_path / "ids.bin"
    np.arange(50, dtype=np.uint32).tofile(path)
    windows = TokenWindows(np.memmap(path, dtype=np.uint32, mode="r"), 7)
    assert len(windows) == 7 and windows[6][1].tolist() == list(range(43, 50))


def test_too_few_tokens():
    with pytest.raises(DataError, match=r"dataset has 4 tokens, fewer than seq_len\+1=5; lower --seq-len"):
        _windows(4, 4)


def test_same_seed_same_order_new_epoch_new_order():
    first = list(BatchLoader(_windows(), 5, seed=3))
    again = list(BatchLoader(_windows(), 5, seed=3))
    assert _ids(first) == _ids(again)
    loader = BatchLoader(_windows(), 5, seed=3)
    epoch0, epoch1 = list(loader), list(loader)
    assert loader.epoch == 2
    assert _ids(epoch0) != _ids(epoch1) and sorted(_ids(epoch0)) == sorted(_ids(epoch1)) == list(range(25))
    assert _ids(BatchLoader(_windows(), 5, shuffle=False)) == list(range(25))


@pytest.mark.parametrize("drop_last, num_windows, batch_size", [(True, 24, 4), (False, 25, 4), (False, 25, 3)])
def test_ranks_are_disjoint_and_cover_everything(drop_last, num_windows, batch_size):
    windows = _windows(num_windows * 4 + 1)
    per_rank = [_ids(BatchLoader(windows, batch_size, seed=1, drop_last=drop_last, rank=r, world_size=2))
                for r in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(num_windows))


def test_drop_last_gives_equal_full_batches():
    loaders = [BatchLoader(_windows(), 4, drop_last=True, rank=r, world_size=2) for r in range(2)]
    assert [ld.num_batches for ld in loaders] == [3, 3]  # 25 windows -> 24 used -> 12 per rank
    assert all(inputs.shape == (4, 4) for ld in loaders for inputs, _ in ld)
    short = BatchLoader(_windows(), 4, drop_last=False)
    assert short.num_batches == 7 and [len(b[0]) for b in short][-1] == 1


def test_resume_mid_epoch_continues_exactly():
    reference = BatchLoader(_windows(), 3, seed=7)
    stream = reference.batches_forever()
    expected = [next(stream) for _ in range(20)]  # crosses an epoch (8 batches per epoch)

    loader = BatchLoader(_windows(), 3, seed=7)
    stream = loader.batches_forever()
    taken = [next(stream) for _ in range(11)]
    state = loader.state_dict()
    assert state == {"epoch": 1, "index": 3, "seed": 7, "windows_consumed": 9, "batch_size": 3, "world_size": 1}

    resumed = BatchLoader(_windows(), 3, seed=999)
    resumed.load_state_dict(state)
    stream = resumed.batches_forever()
    rest = [next(stream) for _ in range(9)]
    for (a, b), (c, d) in zip(expected, taken + rest):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_resume_after_last_batch_of_an_epoch():
    loader = BatchLoader(_windows(), 5, seed=2)
    iterator = iter(loader)
    first_epoch = [next(iterator) for _ in range(loader.num_batches)]
    assert loader.state_dict()["index"] == loader.num_batches and first_epoch
    resumed = BatchLoader(_windows(), 5, seed=2)
    resumed.load_state_dict(loader.state_dict())
    assert (resumed.epoch, resumed.index) == (1, 0)
    assert _ids(resumed) == _ids(BatchLoader(_windows(), 5, seed=3))  # epoch 1 uses seed + 1


def test_bad_state_and_tiny_dataset():
    loader = BatchLoader(_windows(), 5)
    with pytest.raises(DataError, match="changed since the checkpoint"):
        loader.load_state_dict({"epoch": 0, "index": 99, "seed": 0})
    with pytest.raises(DataError, match="lacks"):
        loader.load_state_dict({"epoch": 0})
    with pytest.raises(DataError, match="fewer than one batch"):
        BatchLoader(_windows(), 26)


def test_resume_on_another_batch_size_or_world_size_keeps_the_global_position():
    """The loader keeps its own position: windows consumed (all ranks) carry over to a new layout."""
    loader = BatchLoader(_windows(), 4, seed=7)
    stream = loader.batches_forever()
    seen = [next(stream) for _ in range(2)]  # 8 windows of epoch 0
    state = loader.state_dict()
    rank_orders = []
    for rank in range(2):  # 2 ranks x batch 2 = the same global batch of 4
        resumed = BatchLoader(_windows(), 2, seed=0, rank=rank, world_size=2)
        resumed.load_state_dict(state)
        assert (resumed.epoch, resumed.index) == (0, 2)  # 8 windows = 2 global batches of 4
        rank_orders.append(resumed.epoch_order(0))
    with pytest.raises(DataError, match="not a multiple of the new global batch 3"):
        BatchLoader(_windows(), 3, seed=0).load_state_dict(state)
    assert len(seen) == 2
