"""The ``vesper`` command: a Typer root, one module per command, and one error boundary."""

from __future__ import annotations

import os
import sys
import traceback

import click
import typer

from vesper_core import __version__
from vesper_core.errors import VesperError
from vesper_cli.output import err_console

app = typer.Typer(
    name="vesper",
    help="Train, benchmark and sample VesperLM language models with the Velvet optimizer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vesper {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Vesper: VesperLM + Velvet."""


def _register_commands() -> None:
    from vesper_cli.commands import (benchmark, cache, chat, data, env, eval as eval_cmd, export, generate, merge,
                                     metacog, plot, plugins, scale, serve, studio, tokenizer, train)

    # train and study
    app.command("train", help=train.__doc__)(train.train_command)
    app.command("benchmark", help=benchmark.__doc__)(benchmark.benchmark_command)
    app.command("eval", help=eval_cmd.__doc__)(eval_cmd.eval_command)
    app.command("plot", help=plot.__doc__)(plot.plot_command)
    # use a model
    app.command("generate", help=generate.__doc__)(generate.generate_command)
    app.command("chat", help=chat.__doc__)(chat.chat_command)
    app.command("serve", help=serve.__doc__)(serve.serve_command)
    app.command("merge", help=merge.__doc__)(merge.merge_command)
    app.command("export", help=export.__doc__)(export.export_command)
    # data, sizes, the machine, the web app
    app.add_typer(cache.cache_app, name="cache", help=cache.__doc__)
    app.add_typer(tokenizer.tokenizer_app, name="tokenizer", help=tokenizer.__doc__)
    app.add_typer(data.data_app, name="data", help=data.__doc__)
    app.command("scale", help=scale.__doc__)(scale.scale_command)
    app.add_typer(metacog.metacog_app, name="metacog", help=metacog.__doc__)
    app.command("env", help=env.__doc__)(env.env_command)
    app.command("plugins", help=plugins.__doc__)(plugins.plugins_command)
    app.command("studio", help=studio.__doc__)(studio.studio_command)


_register_commands()


# recent typer vendors click: accept both its classes and plain click's
_ABORT = (typer.Abort, click.exceptions.Abort)
_EXIT = (typer.Exit, click.exceptions.Exit)
_USAGE = (typer.TyperException, click.exceptions.ClickException)


def _fail(message: str, code: int = 1) -> int:
    err_console.print(f"Error: {message}", style="red", markup=False)
    if not os.environ.get("VESPER_DEBUG"):
        err_console.print("(set VESPER_DEBUG=1 for a traceback)", style="dim", markup=False)
    return code


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code (tests call this)."""
    try:
        result = app(args=argv, prog_name="vesper", standalone_mode=False)
    except VesperError as exc:
        if os.environ.get("VESPER_DEBUG"):
            traceback.print_exc()
        return _fail(str(exc), exc.exit_code)
    except _ABORT:
        err_console.print("Aborted.", markup=False)
        return 130
    except _EXIT as exc:
        return exc.exit_code
    except _USAGE as exc:  # bad flags: click's own message, exit 2
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("Interrupted.", markup=False)
        return 130
    except OSError as exc:  # a file the user named cannot be read or written: say which, without a class name
        if os.environ.get("VESPER_DEBUG"):
            traceback.print_exc()
        where = f" {exc.filename}" if exc.filename else ""
        return _fail(f"cannot access{where}: {exc.strerror or exc}; check the path and its permissions")
    except Exception as exc:  # the last boundary: one line, traceback on request
        if os.environ.get("VESPER_DEBUG"):
            traceback.print_exc()
        return _fail(f"unexpected {type(exc).__name__}: {exc} (please report this)")
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run())
