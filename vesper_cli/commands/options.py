"""Command-line options whose help and default come from the config dataclasses (one source).

A config field's docstring is its help text and its dataclass default is the ``[default: ...]`` shown;
the option itself defaults to None ("not given") so that a YAML run file or the dataclass fills it.
``--dataset``, ``--tokenizer``, ``--format``, ``--seq-len`` ... are defined here once for every command.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
from typing import Any

import typer


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` from the string literal under each field of a dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def field_default(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            return f.default_factory() if f.default_factory is not dataclasses.MISSING else None
    raise KeyError(f"{cls.__name__} has no field {name}")


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def help_for(cls: type, name: str, *, default: Any = dataclasses.MISSING, note: str = "") -> str:
    doc = field_docs(cls).get(name, "")
    value = field_default(cls, name) if default is dataclasses.MISSING else default
    shown = "" if value in (None, "") or isinstance(value, bool) and not value else f"  [default: {_shown(value)}]"
    return f"{doc}{(' ' + note) if note else ''}{shown}"


def config_option(cls: type, name: str, *param_decls: str, default: Any = dataclasses.MISSING,
                  note: str = "", flag: bool = False) -> Any:
    """A typer option for ``cls.name``: None unless given; ``flag=True`` makes a bare ``--name`` switch."""
    decls = param_decls or ((f"--{name.replace('_', '-')}",) if flag else ())
    return typer.Option(None, *decls, help=help_for(cls, name, default=default, note=note), show_default=False)


# -- shared data options ---------------------------------------------------------------------------
def data_option(name: str, *param_decls: str, **kw) -> Any:
    from vesper_data.config import DataConfig

    return config_option(DataConfig, name, *param_decls, **kw)


def given(**values: Any) -> dict[str, Any]:
    """The options a user gave (None = not given)."""
    return {k: v for k, v in values.items() if v is not None}


INFERENCE_DTYPE_HELP = "Inference precision: f32 | bf16 | f16 | int8 (weight-only int8, needs torchao)."


def inference_dtype_option() -> Any:
    """``--dtype`` of the commands that run a trained model (generate, chat, serve)."""
    return typer.Option("f32", help=INFERENCE_DTYPE_HELP)


def check_metacog_dtype(metacog: bool, dtype: str) -> None:
    """The meta head reads f32 hidden states: --metacog with another --dtype is one clear line."""
    from vesper_core.errors import ConfigError
    from vesper_core.precision import parse_inference_dtype

    if metacog and parse_inference_dtype(dtype) != "f32":
        raise ConfigError(f"--metacog runs the meta head on f32 hidden states; drop --dtype {dtype} (or use f32)")


def metacog_threshold_overrides(confidence_threshold: float | None, regulation_threshold: float | None) -> dict:
    """The --confidence-threshold / --regulation-threshold given (each in [0, 1]) as meta-head overrides."""
    from vesper_core.errors import ConfigError

    given = {"confidence_threshold": confidence_threshold, "regulation_threshold": regulation_threshold}
    for name, value in given.items():
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    return {name: value for name, value in given.items() if value is not None}
