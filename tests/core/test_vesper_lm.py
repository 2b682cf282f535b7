import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vesper_core.errors import CheckpointError, ConfigError
from vesper_core.model import ModelOutput
from vesper_core.presets import model_config


def lm_loss(model, ids):
    out = model(ids)
    return F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), ids[:, 1:].reshape(-1))


def test_forward_shapes_and_outputs(make_model, nano_config, moe_config, make_ids):
    ids = make_ids(2, 9)
    out = make_model(nano_config)(ids, return_hidden=True)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 9, 97) and out.aux_loss is None
    assert out.hidden_states.shape == (2, 9, 64)
    assert make_model(nano_config)(ids).hidden_states is None
    moe = make_model(moe_config)(ids)
    assert moe.aux_loss.dim() == 0 and moe.aux_loss.item() > 0
    with pytest.raises(ConfigError, match="batch, seq_len"):
        make_model(nano_config)(ids[0])


def test_checkpoint_names_follow_upstream(make_model, nano_config, moe_config):
    dense = make_model(nano_config).state_dict()
    for key in ["embeddings.weight", "layers.0.attention.q_proj.weight",
                "layers.1.attention.o_proj.bias", "layers.0.attention_norm.weight",
                "layers.0.ffn_norm.bias",
                "layers.0.ffn.gate_proj.base.weight", "layers.0.ffn.up_proj.lora_down.bias",
                "layers.0.ffn.gate_proj.lora_up.weight", "layers.0.ffn.down_proj.weight",
                "final_norm.weight", "lm_head.weight"]:
        assert key in dense
    assert "lm_head.bias" not in dense
    moe = make_model(moe_config).state_dict()
    assert "layers.0.ffn.router.weight" in moe and "layers.1.ffn.experts.3.down_proj.bias" in moe


def test_head_is_tied_and_counted_once(make_model, nano_config, moe_config):
    model = make_model(nano_config)
    assert model.lm_head.weight is model.embeddings.weight and model.lm_head.bias is None
    assert model.num_parameters() == nano_config.num_params()
    assert make_model(moe_config).num_parameters() == moe_config.num_params()


def test_init_statistics(make_model):
    config = model_config("nano", vocab_size=97, num_layers=8)
    model = make_model(config)
    block = model.layers[0]
    assert block.attention.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert block.attention.o_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.1)  # 1/sqrt(2L)
    assert block.attention.q_proj.bias.abs().sum() == 0
    assert (block.attention_norm.weight == 1).all() and (model.final_norm.bias == 0).all()


def test_causality(make_model, nano_config, moe_config, make_ids):
    for config in (nano_config, moe_config):
        model = make_model(config)
        ids = make_ids(2, 12)
        changed = ids.clone()
        changed[:, 7] = (changed[:, 7] + 1) % 97
        a, b = model(ids).logits, model(changed).logits
        torch.testing.assert_close(a[:, :7], b[:, :7])
        assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_router_learns_from_lm_loss_alone(make_model, moe_config, make_ids):
    model = make_model(moe_config.replace(moe_aux_loss_weight=0.0)).train()
    lm_loss(model, make_ids(2, 10)).backward()  # aux not added
    for block in model.layers:
        assert block.ffn.router.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_same_grads(make_model, nano_config, moe_config, make_ids):
    ids = make_ids(2, 10)
    for config in (nano_config, moe_config):
        grads = []
        for enabled in (False, True):
            model = make_model(config).train()
            model.set_gradient_checkpointing(enabled)
            out = model(ids)
            loss = F.cross_entropy(out.logits.flatten(0, 1), ids.flatten())
            if out.aux_loss is not None:
                loss = loss + 0.01 * out.aux_loss
            loss.backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        assert grads[0].keys() == grads[1].keys()
        for name in grads[0]:
            torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)
    config_on = nano_config.replace(gradient_checkpointing=True)
    assert make_model(config_on).gradient_checkpointing


def test_export_load_round_trip_through_safetensors(tmp_path, make_model, nano_config, make_ids):
    source, target = make_model(nano_config, seed=0), make_model(nano_config, seed=1)
    exported = source.export_state_dict()
    assert "lm_head.weight" not in exported and all(t.is_contiguous() for t in exported.values())
    save_file(exported, tmp_path / "model.safetensors")
    target.load_exported_state_dict(load_file(tmp_path / "model.safetensors"))
    ids = make_ids(2, 8)
    torch.testing.assert_close(target(ids).logits, source(ids).logits, rtol=0, atol=0)
    assert target.lm_head.weight is target.embeddings.weight


def test_load_accepts_full_and_compiled_state_dicts(make_model, nano_config, make_ids):
    source, target = make_model(nano_config, seed=0), make_model(nano_config, seed=1)
    target.load_exported_state_dict({"_orig_mod." + k: v for k, v in source.state_dict().items()})
    ids = make_ids(1, 5)
    torch.testing.assert_close(target(ids).logits, source(ids).logits)


def test_load_errors_are_one_line_checkpoint_errors(make_model, nano_config):
    model = make_model(nano_config)
    wrong = make_model(nano_config.replace(intermediate_size=128)).export_state_dict()
    expected = r"shape mismatch.*gate_proj.*\[128, 64\] vs model \[256, 64\]"
    with pytest.raises(CheckpointError, match=expected):
        model.load_exported_state_dict(wrong)
    partial = model.export_state_dict()
    del partial["final_norm.bias"]
    partial["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        model.load_exported_state_dict(partial)
    message = str(info.value)
    assert "\n" not in message and "missing 1 key(s): final_norm.bias" in message
    assert "unexpected 1 key(s): extra.weight" in message
    model.load_exported_state_dict(partial, strict=False)  # tolerated when not strict
    untied = model.state_dict()
    untied["lm_head.weight"] = torch.zeros_like(untied["lm_head.weight"])
    with pytest.raises(CheckpointError, match="untied"):
        model.load_exported_state_dict(untied)
