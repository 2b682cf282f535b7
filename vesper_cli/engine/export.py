"""`vesper export`: a checkpoint -> a Hugging Face folder or an ONNX model, checked before it is kept.

Order: validate (format, output folder, optional packages), load the checkpoint and its tokenizer, fold
adapters into the weights (when the adapters module is present), write every file into a temporary
folder beside the output, check the result against Vesper's own forward pass (logits within
``tolerance`` and the same greedy tokens, when transformers / onnxruntime are installed), and only
then move the folder into place. A failing export leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vesper_core.checkpoint import read_checkpoint
from vesper_core.device import has_module
from vesper_core.errors import ConfigError, NotImplementedFeatureError, VesperError
from vesper_core.generation import generate
from vesper_core.model import VesperLM
from vesper_data.tokenizers import VesperTokenizer
from vesper_cli.engine.generation import checkpoint_tokenizer

EXPORT_FORMATS = ("hf", "onnx")
VERIFY_TEXT = "Once upon a time, the quick brown fox jumps over the lazy dog. 0123456789"
VERIFY_NEW_TOKENS = 12


class ExportError(VesperError):
    """The exported model does not reproduce Vesper's outputs (nothing was written)."""


@dataclass
class ExportResult:
    format: str
    output: Path
    checkpoint: Path
    files: list[Path]
    max_logit_diff: float | None = None  # None when not verified
    tokens_match: bool | None = None
    notes: list[str] = field(default_factory=list)


def check_export_request(fmt: str, output: str | Path, *, overwrite: bool = False) -> tuple[str, Path]:
    """The canonical format and output path, or one ConfigError line; writes nothing."""
    name = str(fmt).strip().lower()
    if name not in EXPORT_FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; choices: {', '.join(EXPORT_FORMATS)}")
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file; pass a folder path")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--output {out} already exists and is not empty; pass --overwrite to replace it "
                          f"or choose a new folder")
    if name == "onnx":
        from vesper_core.export.onnx import check_onnx_exporter

        check_onnx_exporter()
    return name, out


def export_checkpoint(model_path: str | Path, *, fmt: str, output: str | Path, overwrite: bool = False,
                      tokenizer: str | None = None, verify: bool = True, tolerance: float = 1e-4,
                      opset: int = 18) -> ExportResult:
    """Export the checkpoint (file or run folder) ``model_path`` as ``fmt`` into the folder ``output``."""
    name, out = check_export_request(fmt, output, overwrite=overwrite)
    if tolerance <= 0:
        raise ConfigError(f"--tolerance must be positive, got {tolerance}")
    ckpt = read_checkpoint(model_path)
    tok = checkpoint_tokenizer(ckpt, tokenizer)
    model = merge_adapters_if_any(ckpt.build_model("cpu")).float().eval()
    chat = ckpt.meta("chat_template")
    chat_source = chat.get("source") if isinstance(chat, dict) else None

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export", dir=out.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes a private folder; the export is an ordinary one
    try:
        result = ExportResult(format=name, output=out, checkpoint=ckpt.path, files=[])
        if name == "hf":
            _write_hf(model, tok, staging, chat_source, result)
        else:
            _write_onnx(model, tok, staging, opset, result)
        if verify:
            _verify(name, model, tok, staging, tolerance, result)
        else:
            result.notes.append("not verified (--no-verify)")
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.files = [out / p.name for p in result.files]
    return result


def merge_adapters_if_any(model: VesperLM) -> VesperLM:
    """``model`` as a plain VesperLM: LoRA / FlyLoRA adapters (parameters a plain VesperLM of the same config
    does not have) are folded into the base weights with ``vesper_core.layers.adapters.merge_adapters``."""
    with torch.device("meta"):
        plain = set(VesperLM(model.config).state_dict())
    if set(model.state_dict()) == plain:
        return model
    try:
        from vesper_core.layers.adapters import merge_adapters
    except ImportError:
        raise NotImplementedFeatureError(
            "this checkpoint carries adapters but this install has no vesper_core.layers.adapters.merge_adapters "
            "to fold them in; merge them first (vesper merge) and export the merged checkpoint") from None
    return merge_adapters(model)


def _special_tokens(tok: VesperTokenizer) -> list[str]:
    added = tok.tokenizer.get_added_tokens_decoder()
    return [t.content for _, t in sorted(added.items()) if t.special]


def _eos_token(tok: VesperTokenizer) -> str | None:
    return tok.tokenizer.id_to_token(tok.eos_id) if tok.eos_id is not None else None


def _write_hf(model: VesperLM, tok: VesperTokenizer, folder: Path, chat_template: str | None,
              result: ExportResult) -> None:
    from vesper_core.export.hf import write_hf_folder

    result.files = write_hf_folder(model, folder, tokenizer_json=tok.to_str(), eos_token=_eos_token(tok),
                                   eos_token_id=tok.eos_id, chat_template=chat_template,
                                   special_tokens=_special_tokens(tok))
    if chat_template is None:
        result.notes.append("the checkpoint records no chat template: tokenizer_config.json has none")


def _write_onnx(model: VesperLM, tok: VesperTokenizer, folder: Path, opset: int, result: ExportResult) -> None:
    from vesper_core.export.onnx import export_onnx

    result.files = export_onnx(model, folder, eos_token_id=tok.eos_id, opset=opset)
    tok.save(folder / "tokenizer.json")
    result.files.append(folder / "tokenizer.json")


def _verify(fmt: str, model: VesperLM, tok: VesperTokenizer, folder: Path, tolerance: float,
            result: ExportResult) -> None:
    runtime = "transformers" if fmt == "hf" else "onnxruntime"
    if not has_module(runtime):
        result.notes.append(f"not verified: {runtime} is not installed (pip install 'vesper[export]')")
        return
    ids = tok.encode(VERIFY_TEXT)[: max(1, model.config.max_position_embeddings // 2)]
    prompt = torch.tensor([ids], dtype=torch.long)
    new_tokens = min(VERIFY_NEW_TOKENS, model.config.max_position_embeddings - len(ids))
    with torch.no_grad():
        expected_logits = model(prompt).logits
    expected = generate(model, prompt, max_new_tokens=new_tokens, temperature=0,
                        eos_token_id=tok.eos_id)[0, len(ids):].tolist()
    if fmt == "hf":
        logits, tokens = _run_hf(folder, prompt, new_tokens)
    else:
        logits, tokens = _run_onnx(folder, prompt, new_tokens, tok.eos_id)
    diff = float((logits - expected_logits).abs().max())
    tokens = _until_eos(tokens, tok.eos_id)
    expected = _until_eos(expected, tok.eos_id)
    result.max_logit_diff, result.tokens_match = diff, tokens == expected
    if diff > tolerance or tokens != expected:
        raise ExportError(f"the {fmt} export does not reproduce the checkpoint (max logit difference {diff:.2e}, "
                          f"tolerance {tolerance:.0e}; greedy tokens {'equal' if tokens == expected else 'differ'}); "
                          f"nothing was written. Please report this with the checkpoint's config")


def _until_eos(tokens: list[int], eos: int | None) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos is not None and eos in tokens else tokens


def _run_hf(folder: Path, prompt: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, list[int]]:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True).eval()
        with torch.no_grad():
            logits = hf(prompt).logits
            out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                              do_sample=False)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return logits, out[0, prompt.shape[1]:].tolist()


def _run_onnx(folder: Path, prompt: torch.Tensor, new_tokens: int, eos: int | None
              ) -> tuple[torch.Tensor, list[int]]:
    from vesper_core.export.onnx_runner import OnnxLM

    lm = OnnxLM(folder)
    logits, _ = lm.forward(prompt.numpy(), lm.empty_cache(1))
    tokens = lm.generate_greedy(prompt[0].tolist(), max_new_tokens=new_tokens, eos_token_id=eos)
    return torch.from_numpy(logits), tokens


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _move_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)
