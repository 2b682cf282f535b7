"""Plot training_log.json files (loss and perplexity per step), or one benchmark report, as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def plot_command(
    logs: List[Path] = typer.Argument(..., help="training_log.json files (or one benchmark_report.json)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="PNG path  [default: first LOG with .png]"),
) -> None:
    from vesper_cli.plots import plot_files

    path, _ = plot_files(logs, output)
    typer.echo(str(path))
