"""`avfeat audit`: score every video of a cache, write the table and report, repair what is out of sync."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from avfeat.cli.options import device_option, overwrite_option, quiet_option


def audit(
    cache: Path = typer.Argument(..., help="A cache folder written by `avfeat extract`."),
    heads: Path = typer.Option(..., "--heads", help="Heads checkpoint trained on this cache's backbones (`avfeat train-head`)."),
    out: Path = typer.Option(Path("audit.parquet"), "--out", "-o", help="The audit table to write (Parquet, one row per video)."),
    report: Optional[Path] = typer.Option(None, "--report", help="The HTML report (default: OUT with .html); 'none' writes none."),
    worst: int = typer.Option(20, "--worst", min=0, help="Videos shown in the report, least likely to match first."),
    windows: int = typer.Option(3, "--windows", min=1, help="Worst-matching windows listed per video."),
    max_offset: float = typer.Option(2.0, "--max-offset", help="Largest offset searched, seconds either way."),
    fix_dir: Optional[Path] = typer.Option(None, "--fix-dir", help="Write a copy of each out-of-sync video with its audio shifted back into this folder (remuxed, pictures untouched)."),
    min_confidence: float = typer.Option(0.9, "--min-confidence", help="With --fix-dir: fix only offsets whose p_sync reaches this."),
    seed: int = typer.Option(0, "--seed", help="Seed of the grouping and of the synthetic shifts that calibrate p_sync."),
    overwrite: bool = overwrite_option("Replace an existing --out table (and report), and files in --fix-dir."),
    device: str = device_option("heads score the cached tokens"),
    quiet: bool = quiet_option("No progress bar."),
) -> None:
    """Score every video of a cache: does its sound belong to its pictures, is it in sync, is it silent or static.

    With --fix-dir and an existing --out table of this cache and these heads, the table is used as it is (no new audit).
    """
    from avfeat.index.audit.calibration import SYNC_STEP
    from avfeat.index.audit.run import run_audit

    run = run_audit(cache, heads, out, report, worst=worst, windows=windows, max_offset=max_offset, fix_dir=fix_dir,
                    min_confidence=min_confidence, seed=seed, overwrite=overwrite, device=device,
                    progress=None if quiet else _progress, on_audited=_summary)
    for note in run.notes:
        typer.echo(f"note: {note}", err=True)
    if run.fixed is not None:
        typer.echo(f"fixed {run.fixed} videos into {fix_dir} (offset beyond {SYNC_STEP / 2:g} s, p_sync ≥ {min_confidence:g}) from {out}")


def _progress(count: int):
    from tqdm import tqdm

    return tqdm(total=count, desc="audit", unit="video", dynamic_ncols=True)


def _summary(run) -> None:
    """The lines of a new audit: what it found and what it wrote."""
    counts = run.counts()
    skipped = f"; {len(run.skipped)} shorter than one window not audited" if run.skipped else ""
    typer.echo(f"audited {len(run.rows)} videos: {counts['mismatched']} likely mismatched (p_match < 0.5), {counts['shifted']} out of sync (p_sync ≥ 0.5), "
               f"{counts['silent']} silent, {counts['static']} static{skipped}")
    typer.echo(f"wrote {run.out}" + (f" and {run.report}" if run.report is not None else ""))


def register(app: typer.Typer) -> None:
    app.command()(audit)
