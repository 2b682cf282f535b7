"""Training windows over a token array and a seeded, sharded, resumable batch loader."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from vesper_core.errors import ConfigError, DataError

Batch = tuple[torch.Tensor, torch.Tensor]  # input_ids (B, S) int64, labels (B, S) int64


class TokenWindows:
    """Windows of ``seq_len + 1`` tokens with stride ``seq_len`` (spec §4.2).

    Window ``i`` covers ``tokens[i*S : i*S + S + 1]``: inputs are its first S tokens, labels its
    last S, so consecutive windows share one token and trailing tokens that do not fill a window
    are dropped. ``tokens`` may be a numpy memmap: only the requested windows are read.
    """

    def __init__(self, tokens, seq_len: int):
        if seq_len <= 0:
            raise ConfigError(f"--seq-len must be positive, got {seq_len}")
        tokens = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
        if tokens.ndim != 1:
            raise DataError(f"token array must be 1-D, got shape {tuple(tokens.shape)}")
        if len(tokens) < seq_len + 1:
            raise DataError(f"dataset has {len(tokens)} tokens, fewer than seq_len+1={seq_len + 1}; "
                            f"lower --seq-len or add data")
        self.tokens = tokens
        self.seq_len = seq_len
        self._offsets = np.arange(seq_len + 1)

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.seq_len

    def __getitem__(self, index: int) -> Batch:
        if not -len(self) <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        start = (index % len(self)) * self.seq_len
        window = torch.from_numpy(np.asarray(self.tokens[start:start + self.seq_len + 1], dtype=np.int64))
        return window[:-1], window[1:]

    def get_batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> Batch:
        """Windows ``indices`` stacked: (input_ids, labels), each (len(indices), S) int64."""
        starts = np.asarray(indices, dtype=np.int64) * self.seq_len
        windows = torch.from_numpy(np.asarray(self.tokens[starts[:, None] + self._offsets], dtype=np.int64))
        return windows[:, :-1], windows[:, 1:]


class BatchLoader:
    """Batches of windows in a seeded per-epoch order, sharded by rank, resumable mid-epoch.

    Epoch ``e`` visits ``torch.randperm(n, generator=manual_seed(seed + e))`` (or 0..n-1 without
    shuffle); rank ``r`` of ``world_size`` takes every ``world_size``-th entry from ``r``. With
    ``drop_last`` every rank gets the same number of full batches; without it the last batch
    may be short (and ranks can differ by one batch). ``state_dict()`` is the exact position.
    """

    def __init__(self, windows, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True, rank: int = 0, world_size: int = 1):
        if batch_size <= 0:
            raise ConfigError(f"--batch-size must be positive, got {batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")
        self.windows = windows
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.index = 0  # batches already consumed in this epoch
        if self.num_batches == 0:
            raise DataError(
                f"dataset has {len(windows)} windows, fewer than one batch of {batch_size}"
                f"{f' per rank on {world_size} ranks' if world_size > 1 else ''}; "
                f"lower --batch-size or --seq-len, or add data"
            )

    # -- order ---------------------------------------------------------------------------
    def _num_used(self) -> int:
        """Windows visited per epoch, all ranks together."""
        n = len(self.windows)
        return n - n % self.world_size if self.drop_last else n

    @property
    def num_batches(self) -> int:
        """Batches per epoch on this rank."""
        per_rank = len(range(self.rank, self._num_used(), self.world_size))
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """This rank's window indices for ``epoch``."""
        n = len(self.windows)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(n)
        return order[:self._num_used()][self.rank::self.world_size]

    def _batch(self, order: torch.Tensor, i: int) -> Batch:
        indices = order[i * self.batch_size:(i + 1) * self.batch_size]
        if hasattr(self.windows, "get_batch"):
            return self.windows.get_batch(indices.numpy())
        pairs = [self.windows[int(j)] for j in indices]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    # -- iteration -----------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch (from ``index``); when exhausted, the next epoch starts."""
        if self.index >= self.num_batches:  # the last batch was taken before a save
            self.epoch, self.index = self.epoch + 1, 0
        order = self.epoch_order(self.epoch)
        while self.index < self.num_batches:
            batch = self._batch(order, self.index)
            self.index += 1  # counted before the yield: a state_dict taken now resumes after it
            yield batch
        self.epoch, self.index = self.epoch + 1, 0

    def batches_forever(self) -> Iterator[Batch]:
        """Epoch after epoch, without end (stop with max_steps)."""
        while True:
            yield from self

    # -- position ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """The exact position, plus the global count of windows consumed in this epoch (all ranks
        together), so that a run can continue on another batch size or world size."""
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed,
                "windows_consumed": self.index * self.batch_size * self.world_size,
                "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken (its seed wins over the constructor's).

        A state taken with another batch size x world size resumes at the same global window when the
        windows consumed so far are a whole number of this loader's global batches.
        """
        if "stream" in state:
            raise DataError("the checkpoint's data position was saved with --streaming; resume with the same "
                            "data source (--dataset/--streaming/--cache) as the original run")
        missing = {"epoch", "index", "seed"} - set(state)
        if missing:
            raise DataError(f"data loader state lacks {', '.join(sorted(missing))}; "
                            f"expected keys epoch, index, seed")
        epoch, index, seed = int(state["epoch"]), int(state["index"]), int(state["seed"])
        saved_layout = (int(state.get("batch_size", self.batch_size)), int(state.get("world_size", self.world_size)))
        if saved_layout != (self.batch_size, self.world_size):
            per_step = self.batch_size * self.world_size
            consumed = int(state.get("windows_consumed", index * saved_layout[0] * saved_layout[1]))
            if consumed % per_step:
                raise DataError(
                    f"cannot resume the data position: {consumed} windows were consumed in this epoch, not a "
                    f"multiple of the new global batch {per_step} (batch {self.batch_size} x {self.world_size} "
                    f"ranks); keep --batch-size x ranks equal to the original {saved_layout[0]} x {saved_layout[1]}")
            index = consumed // per_step
        if epoch < 0 or not 0 <= index <= self.num_batches:
            raise DataError(
                f"saved data position (epoch {epoch}, batch {index}) does not fit this loader's "
                f"{self.num_batches} batches per epoch; the dataset, --seq-len or --batch-size changed "
                f"since the checkpoint"
            )
        if index == self.num_batches:  # saved right after an epoch's last batch
            epoch, index = epoch + 1, 0
        self.epoch, self.index, self.seed = epoch, index, seed
