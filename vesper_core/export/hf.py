"""A Hugging Face folder from a VesperLM: ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``.

The folder holds config.json (with ``auto_map`` pointing at the two source files below), the source
files themselves (``vesper_core/export/hf_files``: a self-contained transformers model of VesperLM's
forward pass), model.safetensors (Vesper's own state dict: the parameter names are the same, the tied
head is stored once), the tokenizer (tokenizer.json as trained plus tokenizer_config.json naming its
special tokens and, when there is one, the chat template) and generation_config.json. Writing needs
neither transformers nor tokenizers; loading needs transformers.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from vesper_core import __version__
from vesper_core.atomic import write_json_atomic, write_text_atomic, write_with_atomic
from vesper_core.model import VesperLM

CONFIG_FILE = "configuration_vesper.py"
MODELING_FILE = "modeling_vesper.py"
HF_FILES = ("config.json", CONFIG_FILE, MODELING_FILE, "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def hf_config(model: VesperLM, *, eos_token_id: int | None) -> dict[str, Any]:
    """config.json: VesperConfig's fields (transformers' names for layers and heads) plus the auto_map."""
    c = model.config
    return {
        "architectures": ["VesperForCausalLM"],
        "model_type": "vesper",
        "auto_map": {"AutoConfig": "configuration_vesper.VesperConfig",
                     "AutoModelForCausalLM": "modeling_vesper.VesperForCausalLM"},
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "intermediate_size": c.intermediate_size,
        "max_position_embeddings": c.max_position_embeddings,
        "flylora_rank": c.flylora_rank,
        "flylora_alpha": c.flylora_alpha,
        "era_gamma": c.era_gamma,
        "layer_norm_eps": c.layer_norm_eps,
        "rope_theta": c.rope_theta,
        "moe_enabled": c.moe_enabled,
        "moe_num_experts": c.moe_num_experts,
        "moe_top_k": c.moe_top_k,
        "initializer_range": c.init_std,
        "tie_word_embeddings": True,
        "use_cache": True,
        "torch_dtype": "float32",
        "eos_token_id": eos_token_id,
        "pad_token_id": eos_token_id,
        "bos_token_id": None,
        "vesper_version": __version__,
    }


def tokenizer_config(*, eos_token: str | None, max_length: int, chat_template: str | None,
                     special_tokens: list[str]) -> dict[str, Any]:
    """tokenizer_config.json for a fast tokenizer over tokenizer.json: no BOS, nothing added around the text,
    no clean-up of spaces on decoding (so ids and text are exactly Vesper's)."""
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": None,
        "eos_token": eos_token,
        "pad_token": eos_token,
        "unk_token": None,
    }
    extra = [t for t in special_tokens if t != eos_token]
    if extra:
        config["additional_special_tokens"] = extra
    if chat_template:
        config["chat_template"] = chat_template
    return config


def write_hf_folder(model: VesperLM, folder: str | Path, *, tokenizer_json: str, eos_token: str | None,
                    eos_token_id: int | None, chat_template: str | None = None,
                    special_tokens: list[str] | None = None) -> list[Path]:
    """Write the Hugging Face files of ``model`` (float32 weights) into the existing ``folder``.

    ``tokenizer_json`` is the text of the tokenizer.json the model was trained with; ``special_tokens`` its
    added special tokens (the EOS among them). Returns the files written.
    """
    folder = Path(folder)
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.export_state_dict().items()}
    write_with_atomic(folder / "model.safetensors",
                      lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    write_json_atomic(folder / "config.json", hf_config(model, eos_token_id=eos_token_id))
    for name in (CONFIG_FILE, MODELING_FILE):
        source = resources.files("vesper_core.export.hf_files").joinpath(name).read_text(encoding="utf-8")
        write_text_atomic(folder / name, source)
    write_text_atomic(folder / "tokenizer.json", tokenizer_json)
    specials = list(special_tokens or [])
    write_json_atomic(folder / "tokenizer_config.json",
                      tokenizer_config(eos_token=eos_token, max_length=model.config.max_position_embeddings,
                                       chat_template=chat_template, special_tokens=specials))
    special_map: dict[str, Any] = {"eos_token": eos_token, "pad_token": eos_token} if eos_token else {}
    if [t for t in specials if t != eos_token]:
        special_map["additional_special_tokens"] = [t for t in specials if t != eos_token]
    write_json_atomic(folder / "special_tokens_map.json", special_map)
    generation: dict[str, Any] = {"do_sample": False}
    if eos_token_id is not None:
        generation.update(eos_token_id=eos_token_id, pad_token_id=eos_token_id)
    write_json_atomic(folder / "generation_config.json", generation)
    return [folder / name for name in HF_FILES]

