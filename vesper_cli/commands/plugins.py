"""List what is registered (model presets, optimizers, tokenizers, data formats, kernel backends) and from where."""

from __future__ import annotations

import json

import typer

from vesper_cli.output import console
from vesper_cli.engine.registries import all_registries


def plugins_command(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    rows = []
    for kind, registry in all_registries().items():
        aliases = registry.aliases()
        for entry in registry:
            names = [a for a, target in aliases.items() if target == entry.name]
            rows.append({"kind": kind, "name": entry.name, "aliases": names, "origin": entry.origin,
                         "entry_point_group": registry.entry_point_group})
    if as_json:
        console.print_json(json.dumps(rows))
        return
    from rich.table import Table

    table = Table(title="Registered names")
    for column in ("kind", "name", "origin"):
        table.add_column(column)
    for row in rows:
        name = row["name"] + (f" ({', '.join(row['aliases'])})" if row["aliases"] else "")
        table.add_row(row["kind"], name, row["origin"])
    console.print(table)
