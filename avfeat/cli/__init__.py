"""The `avfeat` command: the only package that speaks typer.

One module per command group (`extract`, `train`, `index`, ...): a command parses its options,
calls one library function and prints what it returns. This module assembles them and turns a
user's error into one line. Heavy libraries are imported inside commands so `avfeat --help`
stays instant.
"""

from __future__ import annotations

import sys

import typer

from avfeat import __version__
from avfeat.core.errors import AvfeatError, disk_full

app = typer.Typer(
    name="avfeat",
    help="Aligned audio-visual embeddings from video: extract, train heads, index, search.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"avfeat {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """avfeat: cache frozen HuBERT + DINOv2 tokens once, then train, index and search cheaply."""


def _register() -> None:
    from avfeat.cli import audit, data, demo, eval, export, extract, index, serve, train

    # The order of `avfeat --help`.
    for module in (demo, data, extract, train, index, audit, export, serve, eval):
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 1.

    ``argv`` (default ``sys.argv[1:]``) lets tests run a command in-process; it ends, as on the
    command line, with ``SystemExit``.
    """
    from avfeat.cli.extract import expand_ray_flag

    try:
        app(args=expand_ray_flag(sys.argv[1:] if argv is None else list(argv)), prog_name="avfeat")
    except AvfeatError as error:
        typer.echo(f"avfeat: error: {error}", err=True)
        sys.exit(1)
    except (OSError, RuntimeError) as error:
        # A full disk can strike any write; what was committed stays whole (README "Crash-safe").
        full = disk_full(error)
        if full is None:
            raise
        typer.echo(f"avfeat: error: {full}; nothing committed is lost: free space and run the same command again (add --resume where it applies)", err=True)
        sys.exit(1)
