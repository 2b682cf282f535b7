"""Train a VesperLM on a dataset, a token cache or a streamed file (or the built-in `demo` corpus)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vesper_cli.commands.options import config_option, data_option
from vesper_cli.engine.run_config import ModelSpec, TrainConfig
from vesper_cli.progress import ConsoleTrainObserver
from vesper_optim.config import OptimConfig

T, M, O = TrainConfig, ModelSpec, OptimConfig


def train_command(
    dataset: Optional[str] = data_option("dataset"),
    format: Optional[str] = data_option("format", "--format"),
    text_field: Optional[str] = data_option("text_field"),
    tokenizer: Optional[str] = data_option("tokenizer"),
    model_size: Optional[str] = config_option(M, "model_size"),
    epochs: Optional[int] = config_option(T, "epochs", default=None),
    batch_size: Optional[int] = data_option("batch_size"),
    lr: Optional[float] = config_option(O, "lr"),
    seq_len: Optional[int] = data_option("seq_len"),
    save_every: Optional[int] = config_option(T, "save_every"),
    output_dir: Optional[str] = config_option(T, "output_dir"),
    max_steps: Optional[int] = config_option(T, "max_steps"),
    vocab_size: Optional[int] = data_option("vocab_size"),
    optimizer: Optional[str] = config_option(O, "name", "--optimizer"),
    resume: Optional[str] = config_option(T, "resume"),
    init_from: Optional[str] = config_option(T, "init_from"),
    chat_template: Optional[str] = data_option("chat_template"),
    train_on_prompt: Optional[bool] = data_option("train_on_prompt", flag=True),
    overwrite: Optional[bool] = config_option(T, "overwrite", flag=True),
    moe: Optional[bool] = config_option(M, "moe", flag=True),
    num_experts: Optional[int] = config_option(M, "num_experts"),
    top_k: Optional[int] = config_option(M, "top_k"),
    dtype: Optional[str] = config_option(T, "dtype"),
    gradient_checkpointing: Optional[bool] = config_option(M, "gradient_checkpointing", flag=True),
    seed: Optional[int] = config_option(T, "seed"),
    device: Optional[str] = config_option(T, "device"),
    log_every: Optional[int] = config_option(T, "log_every"),
    grad_accum: Optional[int] = config_option(T, "grad_accum"),
    loss: Optional[str] = config_option(T, "loss"),
    warmup_steps: Optional[int] = config_option(O, "warmup_steps"),
    lr_schedule: Optional[str] = config_option(O, "lr_schedule"),
    min_lr_ratio: Optional[float] = config_option(O, "min_lr_ratio"),
    weight_decay: Optional[float] = config_option(O, "weight_decay"),
    max_grad_norm: Optional[float] = config_option(O, "max_grad_norm"),
    beta1: Optional[float] = config_option(O, "beta1"),
    beta2: Optional[float] = config_option(O, "beta2"),
    eps: Optional[float] = config_option(O, "eps"),
    velvet_rules: Optional[str] = config_option(O, "velvet_rules"),
    entropy_signal: Optional[str] = config_option(O, "entropy_signal", default=None),
    entropy_target: Optional[float] = config_option(O, "entropy_target", default=None),
    perplexity_target: Optional[float] = config_option(O, "perplexity_target", default=None),
    lr_combine: Optional[str] = config_option(O, "lr_combine", default=None),
    hypergradient_rate: Optional[float] = config_option(O, "hypergradient_rate", default=None),
    entropy_adaptive: Optional[bool] = config_option(O, "entropy_adaptive", "--entropy-adaptive/--no-entropy-adaptive"),
    perplexity_guided: Optional[bool] = config_option(O, "perplexity_guided", "--perplexity-guided/--no-perplexity-guided"),
    sparse_aware: Optional[bool] = config_option(O, "sparse_aware", flag=True),
    sparse_params: Optional[str] = config_option(O, "sparse_params"),
    backend: Optional[str] = config_option(O, "backend"),
    val_dataset: Optional[str] = data_option("val_dataset"),
    val_fraction: Optional[float] = data_option("val_fraction"),
    eval_every: Optional[int] = config_option(T, "eval_every"),
    eval_batches: Optional[int] = config_option(T, "eval_batches"),
    keep_last: Optional[int] = config_option(T, "keep_last"),
    max_bad_steps: Optional[int] = config_option(T, "max_bad_steps"),
    compile: Optional[bool] = config_option(T, "compile", flag=True),
    fsdp: Optional[bool] = config_option(T, "fsdp", flag=True),
    num_workers: Optional[int] = data_option("num_workers"),
    cache: Optional[str] = data_option("cache"),
    streaming: Optional[bool] = data_option("streaming", flag=True),
    chunk_mb: Optional[int] = data_option("chunk_mb"),
    wandb: Optional[bool] = config_option(T, "wandb", flag=True),
    wandb_project: Optional[str] = config_option(T, "wandb_project"),
    wandb_run: Optional[str] = config_option(T, "wandb_run"),
    tensorboard: Optional[bool] = config_option(T, "tensorboard", flag=True),
    metacog: Optional[bool] = config_option(T, "metacog", flag=True),
    metacog_only: Optional[bool] = config_option(T, "metacog_only", flag=True),
    metacog_weight: Optional[float] = config_option(T, "metacog_weight"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML run file; flags given here override it."),
) -> None:
    flags = {k: v for k, v in locals().items() if k != "config"}  # every option, before any other local
    from vesper_cli.engine import StopControl, build_run_config, train

    run = build_run_config(flags, config)
    with StopControl() as control:
        result = train(run, ConsoleTrainObserver(run.train.log_every), control)
    if result.stopped_by is not None:  # the shell convention: 128 + the signal's number
        raise typer.Exit(exit_code_for(result.stopped_by))


def exit_code_for(reason: str) -> int:
    import signal

    number = getattr(signal, reason, None) if reason.startswith("SIG") else None
    return 128 + int(number) if number is not None else 130
