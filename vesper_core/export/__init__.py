"""Export a VesperLM: a Hugging Face folder (transformers with trust_remote_code) or an ONNX prefill + decode
pair (onnxruntime). ``vesper_cli.engine.export.export_checkpoint`` is the one entry point from a checkpoint."""

from vesper_core.export.hf import HF_FILES, write_hf_folder

__all__ = ["HF_FILES", "write_hf_folder"]
