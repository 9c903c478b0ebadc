"""The `avfeat` command: gathers each stage's commands into one typer app.

Stage commands live with their stage (`extract/cli.py`, `data/cli.py`, ...); this module only
assembles them. Heavy libraries are imported inside commands so `avfeat --help` stays instant.
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
    from avfeat import demo, evaluation
    from avfeat.align import cli as align_cli
    from avfeat.data import cli as data_cli
    from avfeat.extract import cli as extract_cli
    from avfeat.index import cli as index_cli
    from avfeat.index import audit, export, serve

    for module in (demo, data_cli, extract_cli, align_cli, index_cli, audit, export, serve, evaluation):
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 1.

    ``argv`` (default ``sys.argv[1:]``) lets tests run a command in-process; it ends, as on the
    command line, with ``SystemExit``.
    """
    from avfeat.extract.cli import expand_ray_flag

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
