"""Train a VesperLM on a dataset, a token cache or a streamed file (or the built-in `demo` corpus)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vesper_cli.progress import ConsoleTrainObserver
from vesper_cli.run_config import build_run_config

Opt = typer.Option


def train_command(
    dataset: Optional[str] = Opt(None, help="Training file (.txt, .jsonl, SQuAD .json, .parquet/.arrow), hf:NAME[:CONFIG][@SPLIT], or 'demo'."),
    format: Optional[str] = Opt(None, "--format", help="auto | text | jsonl | squad | hf  [default: auto]"),
    tokenizer: Optional[str] = Opt(None, help="auto | byte | PATH/tokenizer.json | folder | HF hub id  [default: auto]"),
    model_size: Optional[str] = Opt(None, help="Preset: nano, tiny, small, medium, large, xlarge (1b), tiny-moe, medium-moe, large-moe  [default: small]"),
    epochs: Optional[int] = Opt(None, help="Passes over the data  [default: 3; unlimited when --max-steps is set]"),
    batch_size: Optional[int] = Opt(None, help="Sequences per optimizer step  [default: 4]"),
    lr: Optional[float] = Opt(None, help="Base learning rate  [default: 3e-4]"),
    seq_len: Optional[int] = Opt(None, help="Tokens per sample  [default: 512]"),
    save_every: Optional[int] = Opt(None, help="Checkpoint every N steps, 0 = only epoch/final  [default: 500]"),
    output_dir: Optional[str] = Opt(None, help="Where checkpoints and training_log.json go  [default: checkpoints]"),
    max_steps: Optional[int] = Opt(None, help="Stop at this global step, 0 = no limit  [default: 0]"),
    vocab_size: Optional[int] = Opt(None, help="Model vocabulary, 0 = the tokenizer's  [default: 0]"),
    optimizer: Optional[str] = Opt(None, help="velvet | adamw  [default: velvet]"),
    resume: Optional[str] = Opt(None, help="Checkpoint to continue from."),
    moe: Optional[bool] = Opt(None, "--moe", help="Turn Mixture of Experts on for any preset."),
    num_experts: Optional[int] = Opt(None, help="Experts with --moe  [default: 8]"),
    top_k: Optional[int] = Opt(None, help="Experts per token with --moe  [default: 2]"),
    dtype: Optional[str] = Opt(None, help="f32 | bf16 | f16 (autocast over f32 weights)  [default: bf16]"),
    gradient_checkpointing: Optional[bool] = Opt(None, "--gradient-checkpointing",
                                                 help="Recompute each block in backward to save memory."),
    seed: Optional[int] = Opt(None, help="Seed for weights, shuffling and sampling  [default: 0]"),
    device: Optional[str] = Opt(None, help="auto | cpu | cuda  [default: auto]"),
    log_every: Optional[int] = Opt(None, help="Plain log line every N steps (non-TTY)  [default: 10]"),
    grad_accum: Optional[int] = Opt(None, help="Micro-batches per optimizer step  [default: 1]"),
    warmup_steps: Optional[int] = Opt(None, help="Linear LR warm-up steps  [default: 0]"),
    lr_schedule: Optional[str] = Opt(None, help="constant | cosine (to 0.1 x lr at the last step)  [default: constant]"),
    weight_decay: Optional[float] = Opt(None, help="Decoupled weight decay on matrices  [default: 1e-3]"),
    max_grad_norm: Optional[float] = Opt(None, help="Global gradient clipping, 0 = off  [default: 1.0]"),
    val_dataset: Optional[str] = Opt(None, help="Held-out file for validation loss/perplexity."),
    eval_every: Optional[int] = Opt(None, help="Evaluate every N steps (needs --val-dataset), 0 = only at the end  [default: 0]"),
    keep_last: Optional[int] = Opt(None, help="Keep only the newest K periodic checkpoints, 0 = all  [default: 0]"),
    max_bad_steps: Optional[int] = Opt(None, help="Stop after N consecutive non-finite steps  [default: 10]"),
    compile: Optional[bool] = Opt(None, "--compile", help="torch.compile the model (checkpoints stay uncompiled)."),
    fsdp: Optional[bool] = Opt(None, "--fsdp", help="Shard the model over torchrun ranks (FSDP2) for models too big for one device."),
    num_workers: Optional[int] = Opt(None, help="Chunks tokenized ahead with --streaming (at least 2)  [default: 0]"),
    cache: Optional[str] = Opt(None, help="Train from a VSPR .bin token cache (`vesper cache build`); --dataset not needed."),
    streaming: Optional[bool] = Opt(None, "--streaming", help="Tokenize --dataset chunk by chunk in the background (files larger than memory)."),
    chunk_mb: Optional[int] = Opt(None, help="Streaming chunk size in MiB  [default: 50]"),
    wandb: Optional[bool] = Opt(None, "--wandb", help="Log to Weights & Biases (needs the wandb extra)."),
    wandb_project: Optional[str] = Opt(None, help="W&B project  [default: vesper-training]"),
    wandb_run: Optional[str] = Opt(None, help="W&B run name  [default: vesper-SIZE-DTYPE]"),
    metacog: Optional[bool] = Opt(None, "--metacog", help="Also train a meta head (confidence, errors, termination) on the final hidden states."),
    metacog_only: Optional[bool] = Opt(None, "--metacog-only", help="Train only the meta head on the frozen --resume model."),
    metacog_weight: Optional[float] = Opt(None, help="Weight of the metacog loss with --metacog  [default: 0.1]"),
    config: Optional[Path] = Opt(None, "--config", help="YAML run file; flags given here override it."),
) -> None:
    from vesper_cli.control import StopControl
    from vesper_cli.training import train

    flags = dict(
        dataset=dataset, format=format, tokenizer=tokenizer, model_size=model_size, epochs=epochs,
        batch_size=batch_size, lr=lr, seq_len=seq_len, save_every=save_every, output_dir=output_dir,
        max_steps=max_steps, vocab_size=vocab_size, optimizer=optimizer, resume=resume, moe=moe,
        num_experts=num_experts, top_k=top_k, dtype=dtype, gradient_checkpointing=gradient_checkpointing,
        seed=seed, device=device, log_every=log_every, grad_accum=grad_accum, warmup_steps=warmup_steps,
        lr_schedule=lr_schedule, weight_decay=weight_decay, max_grad_norm=max_grad_norm, val_dataset=val_dataset,
        eval_every=eval_every, keep_last=keep_last, max_bad_steps=max_bad_steps, compile=compile, fsdp=fsdp,
        num_workers=num_workers, cache=cache, streaming=streaming, chunk_mb=chunk_mb, wandb=wandb, wandb_project=wandb_project, wandb_run=wandb_run,
        metacog=metacog, metacog_only=metacog_only, metacog_weight=metacog_weight,
    )
    run = build_run_config(flags, config)
    with StopControl() as control:
        train(run, ConsoleTrainObserver(run.train.log_every), control)
