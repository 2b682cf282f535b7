"""What this machine offers Vesper: devices, versions, kernel backends, optional extras (`vesper env`)."""

from __future__ import annotations

import json

import typer

from vesper_cli.output import console

Opt = typer.Option


def env_command(as_json: bool = Opt(False, "--json", help="Print everything as JSON.")) -> None:
    """Devices and memory, library versions, which kernel backends run here and which extras are installed."""
    from vesper_cli.engine.environment import collect_environment

    env = collect_environment()
    if as_json:
        console.print_json(json.dumps(env.to_dict()))
        return
    console.print(f"vesper {env.vesper}, python {env.python}, torch {env.torch} ({env.platform}), "
                  f"{env.num_threads} CPU threads", markup=False)
    if env.devices:
        for d in env.devices:
            free = f", {d.free_memory_mib:,} MiB free" if d.free_memory_mib is not None else ""
            console.print(f"cuda:{d.index}  {d.name}  {d.total_memory_mib:,} MiB{free}  sm {d.capability}",
                          markup=False)
    else:
        console.print(f"CUDA: not available (torch CUDA runtime: {env.cuda_runtime or 'none, a CPU build'})",
                      markup=False)
    console.print("velvet backends:", markup=False)
    for b in env.backends:
        console.print(f"  {b.name:<10}{'usable' if b.reason is None else 'no: ' + b.reason}", markup=False)
    console.print("optional packages:", markup=False)
    for p in env.packages:
        state = p.version if p.usable else f"missing (pip install 'vesper[{p.extra}]')"
        console.print(f"  {p.module:<14}{state}", markup=False)
