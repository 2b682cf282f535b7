import math

import pytest
import torch

from vesper_core.errors import ConfigError
from vesper_metacog import MetacogConfig, MetaHead, MetaTargets, metacog_loss


def synthetic(batch=4, T=16, H=16, seed=0):
    """Hidden states whose first five coordinates linearly encode every target."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, T, H, generator=g)
    targets = MetaTargets(confidence=(hidden[..., 0] > 0).float(),
                          termination=(hidden[..., 1] > 0).float(),
                          errors=(hidden[..., 2:5] > 0).float(),
                          mask=torch.ones(batch, T, dtype=torch.bool))
    return hidden, targets


def test_fresh_head_loss_is_three_times_log2():
    hidden, targets = synthetic()
    head = MetaHead(MetacogConfig(hidden_size=16))
    loss, parts = metacog_loss(head(hidden * 0), targets)
    assert loss.item() == pytest.approx(3 * math.log(2), rel=1e-5)
    assert set(parts) >= {"confidence", "termination", "errors", "error_factual", "total"}


def test_training_the_head_alone_lowers_the_loss():
    torch.manual_seed(0)
    hidden, targets = synthetic()
    head = MetaHead(MetacogConfig(hidden_size=16, meta_hidden=32))
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    losses = []
    for _ in range(50):
        loss, _ = metacog_loss(head(hidden), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.4 * losses[0]


def test_mask_excludes_positions():
    hidden, targets = synthetic(batch=1, T=4)
    head = MetaHead(MetacogConfig(hidden_size=16))
    meta = head(hidden)
    masked = MetaTargets(targets.confidence, targets.termination, targets.errors,
                         torch.tensor([[True, True, False, False]]))
    flipped = MetaTargets(torch.cat([targets.confidence[:, :2], 1 - targets.confidence[:, 2:]], 1),
                          targets.termination, targets.errors, masked.mask)
    assert metacog_loss(meta, masked)[0].item() == pytest.approx(metacog_loss(meta, flipped)[0].item())


def test_error_count_mismatch_is_a_config_error():
    hidden, targets = synthetic(batch=1, T=2)
    head = MetaHead(MetacogConfig(hidden_size=16, num_error_types=2))
    with pytest.raises(ConfigError, match="num_error_types"):
        metacog_loss(head(hidden), targets)
