"""`avfeat demo`: the whole tool on a synthetic corpus, offline, with a report."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from avfeat.cli.options import device_option, overwrite_option, quiet_option
from avfeat.demo import DemoConfig  # light: the recipe's defaults are the options' defaults


def demo(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="Folder for every stage and the report."),
    audio_model: str = typer.Option(DemoConfig.audio_model, help="Audio backbone (e.g. facebook/hubert-base-ls960 with internet)."),
    visual_model: str = typer.Option(DemoConfig.visual_model, help="Visual backbone (e.g. facebook/dinov2-small)."),
    videos: int = typer.Option(DemoConfig.videos, min=20, help="Synthetic videos to generate."),
    device: str = device_option("demo's models run"),
    overwrite: bool = overwrite_option("Replace a previous demo in --out."),
    quiet: bool = quiet_option("No progress bars."),
) -> None:
    """Synthesize, extract, train, index, search, sync, locate and evaluate: the whole tool, offline."""
    from avfeat.demo import run_demo

    config = DemoConfig(audio_model=audio_model, visual_model=visual_model, videos=videos)
    started = time.perf_counter()
    report = run_demo(out, config, quiet=quiet, device=device, overwrite=overwrite, say=lambda line: typer.echo(line, err=True))
    typer.echo(f"demo finished in {time.perf_counter() - started:.0f} s: {report}")


def register(app: typer.Typer) -> None:
    app.command()(demo)
