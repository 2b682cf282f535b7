"""Which model sizes a token budget can feed: the Chinchilla heuristic (`vesper scale --tokens N`)."""

from __future__ import annotations

import json

import typer

from vesper_cli.output import console, human_count

Opt = typer.Option


def scale_command(
    tokens: str = Opt(..., help="Training tokens: 100M, 2.5B, 50K or a plain integer."),
    vocab_size: int = Opt(32000, help="Vocabulary of the tokenizer you will train with."),
    batch_size: int = Opt(4, help="Sequences per micro-batch (for the step count)."),
    seq_len: int = Opt(512, help="Tokens per training window (for the step count)."),
    grad_accum: int = Opt(1, help="Micro-batches per optimizer step."),
    count: int = Opt(3, help="Presets and searched shapes to show (each)."),
    as_json: bool = Opt(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Model sizes for N tokens at 20 tokens per parameter, with the steps that train each one."""
    from vesper_cli.engine.scale import parse_token_count, scale_for_tokens

    plan = scale_for_tokens(parse_token_count(tokens), vocab_size=vocab_size, batch_size=batch_size,
                            seq_len=seq_len, grad_accum=grad_accum, count=count)
    if as_json:
        console.print_json(json.dumps(plan.to_dict()))
        return
    console.print(f"{plan.dataset_tokens:,} tokens -> about {plan.optimal_params:,} parameters "
                  f"(20 tokens per parameter); {plan.tokens_per_step:,} tokens per step", markup=False)
    if plan.note:
        console.print(f"note: {plan.note}", markup=False)
    console.print(f"{'name':<14}{'params':>10}{'layers':>8}{'hidden':>8}{'heads':>7}{'tok/param':>11}"
                  f"{'steps':>10}{'epochs':>8}", markup=False)
    for s in plan.suggestions:
        c = s.config
        console.print(f"{s.name:<14}{human_count(s.num_params):>10}{c.num_layers:>8}{c.hidden_size:>8}"
                      f"{c.num_heads:>7}{s.tokens_per_param:>11.3g}{s.recommended_steps:>10,}{s.epochs:>8.2f}",
                      markup=False)
    best = plan.suggestions[0]
    command = (f"vesper train --max-steps {best.recommended_steps} --batch-size {batch_size} --seq-len {seq_len}"
               f"{' --grad-accum ' + str(grad_accum) if grad_accum > 1 else ''}")
    if best.source == "preset":
        console.print(f"train: {command} --model-size {best.name}", markup=False)
    else:
        c = best.config
        console.print(f"train: {command} --config run.yaml, run.yaml holding model: {{num_layers: {c.num_layers}, "
                      f"hidden_size: {c.hidden_size}, num_heads: {c.num_heads}, "
                      f"intermediate_size: {c.intermediate_size}}}", markup=False)
