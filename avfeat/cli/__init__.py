"""The `avfeat` command: the only package that speaks typer.

One module per command group (`extract`, `train`, `index`, ...): a command parses its options,
calls one library function and prints what it returns. This module assembles them and turns a
user's error into one line. Heavy libraries are imported inside commands so `avfeat --help`
stays instant.
"""

from __future__ import annotations

import logging
import os
import sys

import typer
from typer._click.exceptions import ClickException, UsageError
from typer.core import TyperArgument

from avfeat import __version__
from avfeat.core.errors import AvfeatError, disk_full

app = typer.Typer(
    name="avfeat",
    help="Aligned audio-visual embeddings from video: extract, train heads, index, search.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    # Help texts are plain text: rich markup would eat "[default: ...]" and "avfeat[ray]".
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"avfeat {__version__}")
        raise typer.Exit()


class _StderrLines(logging.Handler):
    """``LEVEL name: message`` on the current ``sys.stderr`` (looked up per record: tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"{record.levelname} {record.name}: {record.getMessage()}\n")
        except Exception:  # logging must never break a command
            self.handleError(record)


def set_verbosity(count: int) -> None:
    """``-v``: INFO, ``-vv``: DEBUG for the ``avfeat`` loggers; none: as before (warnings and up
    through Python's last-resort handler). Idempotent, as in-process runs call it per command."""
    logger = logging.getLogger("avfeat")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrLines)]:
        logger.removeHandler(handler)
    if count <= 0:
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
        return
    logger.addHandler(_StderrLines())
    logger.setLevel(logging.INFO if count == 1 else logging.DEBUG)
    logger.propagate = False  # one line per record, not another from a root handler


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, show_default=False, help="Log the choices made (device, dtype, index kind, cache opened) on stderr: -v INFO, -vv DEBUG."),
) -> None:
    """avfeat: cache frozen HuBERT + DINOv2 tokens once, then train, index and search cheaply."""
    set_verbosity(verbose)


def _register() -> None:
    from avfeat.cli import audit, data, demo, eval, export, extract, index, serve, train

    # The order of `avfeat --help`.
    for module in (demo, data, extract, train, index, audit, export, serve, eval):
        module.register(app)


_register()


class _Argument(TyperArgument):
    """A positional argument shown as click shows one: ``CACHE``, ``[QUERY]...`` (typer wraps a
    required one in braces)."""

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")


def command():
    """The click command tree of ``app``, in one argument style: arguments in upper case."""
    root = typer.main.get_command(app)
    commands = getattr(root, "commands", {}).values()
    for cmd in [root, *commands]:
        for param in cmd.params:
            if isinstance(param, TyperArgument):
                param.__class__ = _Argument
                param.metavar = param.metavar or param.name.upper()
    return root


def _usage_error(error: UsageError) -> None:
    """A command-line mistake: one line and exit 2 (the usage convention), not a boxed page."""
    where = error.ctx.command_path if error.ctx is not None else "avfeat"
    message = " ".join(error.format_message().split()).rstrip(".")
    typer.echo(f"avfeat: error: {message} (see `{where} --help`)", err=True)
    sys.exit(error.exit_code)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 1 (a usage
    error, caught while the command line is parsed: exit code 2).

    ``argv`` (default ``sys.argv[1:]``) lets tests run a command in-process; it ends, as on the
    command line, with ``SystemExit``.
    """
    # torch's C++ warnings (a c10d store that closed as a run ended, ...) would print multi-line
    # C++ stack traces past the one-line errors; read when torch loads, so set before any import.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    from avfeat.cli.extract import expand_ray_flag

    try:
        args = expand_ray_flag(sys.argv[1:] if argv is None else list(argv))
        # Not standalone, so that a usage error reaches this function; an exit status comes back.
        status = command().main(args=args, prog_name="avfeat", standalone_mode=False)
    except UsageError as error:
        _usage_error(error)
    except ClickException as error:
        typer.echo(f"avfeat: error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    except AvfeatError as error:
        if not getattr(error, "printed", False):  # a training process may have printed it for the run
            typer.echo(f"avfeat: error: {error}", err=True)
        sys.exit(1)
    except (OSError, RuntimeError) as error:
        # A full disk can strike any write; what was committed stays whole (README "Crash-safe").
        full = disk_full(error)
        if full is None:
            raise
        typer.echo(f"avfeat: error: {full}; nothing committed is lost: free space and run the same command again (add --resume where it applies)", err=True)
        sys.exit(1)
    if isinstance(status, int) and status:
        sys.exit(status)
