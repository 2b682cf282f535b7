"""LoRA / FlyLoRA adapters: what trains, what stays frozen, exact merge, adapter checkpoints."""

from __future__ import annotations

import pytest
import torch

from vesper_core.checkpoint import read_checkpoint, save_adapter_weights, save_weights
from vesper_core.errors import CheckpointError, ConfigError
from vesper_core.layers import FlyLoRALinear
from vesper_core.layers.adapters import (AdapterConfig, AdapterLinear, adapter_state_dict, attach_adapters,
                                         base_state_dict, merge_adapters, wrapped_modules)
from vesper_optim.param_groups import build_param_groups
from vesper_optim.velvet import Velvet

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _train_steps(model, ids, steps=3, **velvet):
    groups = build_param_groups(model, 0.01, sparse_patterns=velvet.pop("sparse_patterns", ()))
    opt = Velvet(groups, lr=1e-2, **velvet)
    model.train()
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.set_signals(float(loss.detach()), vocab_size=model.config.vocab_size)
        opt.step()
        opt.zero_grad()
    return groups


def _randomise_b(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in wrapped_modules(model).values():
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=g) * 0.05)


@pytest.mark.parametrize("kind", ["lora", "flylora"])
def test_attach_freezes_the_base_and_counts_trainable(nano_config, make_model, kind):
    model = make_model(nano_config)
    num_base = sum(p.numel() for p in model.parameters())
    report = attach_adapters(model, AdapterConfig(kind=kind, rank=4, alpha=8, targets=ALL))
    H, I, L = nano_config.hidden_size, nano_config.intermediate_size, nano_config.num_layers
    assert len(report.wrapped) == 7 * L
    shapes = [(H, H)] * 4 + [(H, I), (H, I), (I, H)]  # (in, out) per wrapped projection
    per_layer = sum(4 * (i + o) if kind == "lora" else 4 * o for i, o in shapes)
    assert report.num_trainable == L * per_layer
    assert report.num_total == num_base + report.num_trainable
    assert report.share == pytest.approx(report.num_trainable / report.num_total)
    assert f"{100 * report.share:.2f}%" in report.summary()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {"lora_A", "lora_B"} if kind == "lora" else {"lora_B"}
    assert trainable and {n.rsplit(".", 1)[-1] for n in trainable} == expected
    # the architecture's own FlyLoRALinear in the FFN is wrapped as a whole, its parts stay inside
    assert isinstance(model.layers[0].ffn.gate_proj, AdapterLinear)
    assert isinstance(model.layers[0].ffn.gate_proj.base, FlyLoRALinear)


def test_flylora_a_is_frozen_sparse_random_with_the_documented_sparsity(nano_config, make_model):
    model = make_model(nano_config)
    attach_adapters(model, AdapterConfig(kind="flylora", rank=8, alpha=16, targets=("q_proj", "down_proj")))
    for name, module in wrapped_modules(model).items():
        a = module.lora_A
        assert not isinstance(a, torch.nn.Parameter) and not a.requires_grad
        keep = round(0.25 * module.in_features)  # 75 % exact zeros in every row
        assert ((a != 0).sum(dim=1) == keep).all(), name
        assert a[a != 0].std() == pytest.approx(1 / 8, rel=0.3)  # N(0, 1/R^2)
    rows = [m.lora_A for m in wrapped_modules(model).values()]
    assert not torch.equal(rows[0] != 0, rows[1] != 0)  # each projection draws its own pattern


@pytest.mark.parametrize("kind", ["lora", "flylora"])
def test_training_leaves_the_base_bit_identical(nano_config, make_model, make_ids, kind):
    model = make_model(nano_config)
    base_before = {k: v.clone() for k, v in model.export_state_dict().items()}
    attach_adapters(model, AdapterConfig(kind=kind, rank=4, alpha=8, targets=ALL))
    adapters_before = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    groups = _train_steps(model, make_ids(2, 16))
    trained_names = {n for g in groups for n in g["param_names"]}
    assert all(n.endswith((".lora_A", ".lora_B")) for n in trained_names)  # only adapters reach the optimizer
    base_after = base_state_dict(model)
    assert base_after.keys() == base_before.keys()
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)
    after = adapter_state_dict(model)
    changed = {k.rsplit(".", 1)[-1] for k in after if not torch.equal(after[k], adapters_before[k])}
    assert changed == ({"lora_A", "lora_B"} if kind == "lora" else {"lora_B"})
    if kind == "flylora":
        assert all(torch.equal(after[k], adapters_before[k]) for k in after if k.endswith("lora_A"))


@pytest.mark.parametrize("kind", ["lora", "flylora"])
def test_merge_equals_the_adapted_model(nano_config, make_model, make_ids, kind):
    model = make_model(nano_config)
    attach_adapters(model, AdapterConfig(kind=kind, rank=4, alpha=8, targets=ALL))
    _randomise_b(model)
    model.eval()
    ids = make_ids(2, 24)
    merged = merge_adapters(model).eval()
    assert not wrapped_modules(merged)
    assert type(merged.layers[0].attention.q_proj) is torch.nn.Linear
    with torch.no_grad():
        adapted, plain = model(ids).logits, merged(ids).logits
        base = make_model(nano_config)(ids).logits
    assert (adapted - base).abs().max() > 1e-2  # the adapters do change the function
    assert (adapted - plain).abs().max() <= 1e-5


def test_merge_with_moe_and_router_targets(make_model, make_ids):
    from vesper_core.presets import model_config

    config = model_config("nano", vocab_size=97, moe_enabled=True, moe_num_experts=4, moe_top_k=2)
    model = make_model(config)
    report = attach_adapters(model, AdapterConfig(rank=2, alpha=4, targets=("q_proj", "layers.*.ffn.experts.*.up_proj")))
    assert len(report.wrapped) == config.num_layers * (1 + 4)
    _randomise_b(model)
    ids = make_ids(2, 12)
    with torch.no_grad():
        assert (model(ids).logits - merge_adapters(model).eval()(ids).logits).abs().max() <= 1e-5


def test_top_k_routing_updates_only_the_chosen_ranks(nano_config, make_model):
    model = make_model(nano_config)
    attach_adapters(model, AdapterConfig(kind="flylora", rank=8, alpha=16, top_k=2, targets=("q_proj",)))
    module = model.layers[0].attention.q_proj
    x = torch.randn(1, 1, nano_config.hidden_size)
    module(x).sum().backward()
    touched = (module.lora_B.grad.abs().sum(dim=0) > 0).sum()
    assert touched == 2  # one token routes to top_k = 2 of the 8 rank-1 experts
    with pytest.raises(ConfigError, match="top-k routing"):
        merge_adapters(model)


def test_bad_targets_and_settings_are_one_line_errors(nano_config, make_model):
    with pytest.raises(ConfigError, match="matches no adaptable projection"):
        attach_adapters(make_model(nano_config), AdapterConfig(targets=("qkv",)))
    with pytest.raises(ConfigError, match="matches no adaptable projection"):
        attach_adapters(make_model(nano_config), AdapterConfig(targets=("lm_head",)))
    with pytest.raises(ConfigError, match="--lora-rank"):
        AdapterConfig(rank=0)
    with pytest.raises(ConfigError, match="--flylora-top-k"):
        AdapterConfig(kind="flylora", rank=4, top_k=4)
    with pytest.raises(ConfigError, match="--flylora-sparsity"):
        AdapterConfig(kind="flylora", sparsity=1.0)
    model = make_model(nano_config)
    attach_adapters(model, AdapterConfig(targets=("q_proj",)))
    with pytest.raises(ConfigError, match="already carries adapters"):
        attach_adapters(model, AdapterConfig(targets=("v_proj",)))


def test_sparse_aware_velvet_keeps_structural_zeros_of_an_adapter_group(nano_config, make_model, make_ids):
    model = make_model(nano_config)
    attach_adapters(model, AdapterConfig(kind="lora", rank=4, alpha=8, targets=("q_proj", "v_proj")))
    _randomise_b(model)
    with torch.no_grad():
        for module in wrapped_modules(model).values():
            module.lora_A[:, ::2] = 0.0  # structural zeros
    groups = _train_steps(model, make_ids(2, 16), sparse_aware=True, sparse_patterns=("*.lora_A",))
    sparse = [g for g in groups if g.get("sparse")]
    assert len(sparse) == 1 and all(n.endswith("lora_A") for n in sparse[0]["param_names"])
    for module in wrapped_modules(model).values():
        assert (module.lora_A[:, ::2] == 0).all()
        assert (module.lora_A[:, 1::2] != 0).all()


# -- adapter checkpoints -----------------------------------------------------------------------
@pytest.fixture
def base_and_adapter(tmp_path, nano_config, make_model):
    base = make_model(nano_config)
    base_path = save_weights(tmp_path / "base.safetensors", base, extra={"tokenizer_sha256": "abc"})
    from vesper_core.checkpoint import file_sha256

    model = make_model(nano_config)
    attach_adapters(model, AdapterConfig(kind="lora", rank=4, alpha=8, targets=ALL))
    _randomise_b(model)
    (tmp_path / "run").mkdir()
    adapter_path = save_adapter_weights(tmp_path / "run" / "adapter.safetensors", model, base_path=base_path,
                                        base_sha256=file_sha256(base_path), extra={"step": "7"})
    return base_path, adapter_path, model.eval()


def test_adapter_checkpoint_is_small_and_loads_through_read_checkpoint(base_and_adapter, make_ids):
    base_path, adapter_path, model = base_and_adapter
    assert adapter_path.stat().st_size < base_path.stat().st_size / 2
    ckpt = read_checkpoint(adapter_path)
    assert ckpt.is_adapter and ckpt.adapter.base_path == base_path.resolve() and ckpt.meta("step") == 7
    assert set(ckpt.adapter.state_dict) == set(adapter_state_dict(model))
    ids = make_ids(2, 16)
    loaded = ckpt.build_model().eval()
    assert wrapped_modules(loaded)  # the model as trained: base + adapters
    with torch.no_grad():
        expected = model(ids).logits
        assert torch.equal(loaded(ids).logits, expected)
        # state_dict is the merged plain weights: consumers that build their own VesperLM get the adapted model
        from vesper_core.model import VesperLM

        plain = VesperLM(ckpt.config)
        plain.load_exported_state_dict(ckpt.state_dict)
        assert (plain.eval()(ids).logits - expected).abs().max() <= 1e-5


def test_adapter_checkpoint_finds_a_moved_run_through_the_relative_path(base_and_adapter, tmp_path):
    base_path, adapter_path, _ = base_and_adapter
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    tmp_path.rename(moved)
    try:
        ckpt = read_checkpoint(moved / "run" / "adapter.safetensors")
        assert ckpt.adapter.base_path == (moved / "base.safetensors").resolve()
    finally:
        moved.rename(tmp_path)


def test_missing_or_changed_base_is_one_clear_error(base_and_adapter, nano_config, make_model):
    base_path, adapter_path, _ = base_and_adapter
    save_weights(base_path, make_model(nano_config, seed=5))  # another model under the same name
    with pytest.raises(CheckpointError, match="has changed since adapter checkpoint") as err:
        read_checkpoint(adapter_path)
    assert "\n" not in str(err.value)
    base_path.unlink()
    with pytest.raises(CheckpointError, match="needs its base model .* which is missing"):
        read_checkpoint(adapter_path)
