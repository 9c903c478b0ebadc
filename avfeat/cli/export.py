"""`avfeat export`: the heads' embeddings of a cache as a table other tools read."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from avfeat.cli.options import overwrite_option, quiet_option
from avfeat.index.export import FORMATS, LEVELS


def export_command(
    cache: Path = typer.Argument(..., help="A cache folder written by `avfeat extract`."),
    heads: Path = typer.Option(..., "--heads", help="Heads checkpoint written by `avfeat train-head`."),
    out: Path = typer.Option(..., "--out", "-o", help="The Parquet file to write (an existing file needs --overwrite)."),
    level: Literal[LEVELS] = typer.Option("video", help="video (one row per video: the mean of its window vectors) or window (one row per window)."),
    fmt: Literal[FORMATS] = typer.Option("parquet", "--format", help="parquet (vectors as fixed-size list columns) or npy (<stem>.audio.npy and <stem>.visual.npy beside a Parquet table of the rows)."),
    hop: Optional[float] = typer.Option(None, help="Seconds between window starts (default: the heads' hop)."),
    overwrite: bool = overwrite_option("Replace existing output files."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    quiet: bool = quiet_option(),
) -> None:
    """Unit-norm audio and visual embeddings per video or window, with the manifest's metadata, for pandas/duckdb/datasets."""
    import json

    from avfeat.index.export import export

    summary = export(cache, heads, out, level=level, fmt=fmt, hop=hop, overwrite=overwrite, quiet=quiet)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"wrote {', '.join(summary['files'])}: {summary['rows']} {level} rows of {summary['videos']} videos, {summary['dim']} dims per modality")
    if summary["skipped_short"]:
        typer.echo(f"{len(summary['skipped_short'])} ok videos are shorter than one window and have no vector: {', '.join(summary['skipped_short'][:5])}")


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
