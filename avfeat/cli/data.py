"""`avfeat synth`: write a synthetic audio-visual corpus with known ground truth."""

from __future__ import annotations

from pathlib import Path

import typer

from avfeat.cli.options import quiet_option


def synth(
    out: Path = typer.Argument(..., help="Folder to write the MP4 files and ground_truth.parquet into."),
    videos: int = typer.Option(40, "--videos", "-n", help="Number of videos."),
    seconds: float = typer.Option(6.0, "--seconds", help="Duration of each video in seconds."),
    classes: int = typer.Option(10, "--classes", help="Number of classes (object + sound pairs), at most 48."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same corpus."),
    offset: float = typer.Option(
        0.0,
        "--offset",
        help="Maximum audio offset in seconds: each video's audio is shifted by a value drawn uniformly "
        "from [-OFFSET, +OFFSET] (positive = audio late). 0 keeps audio and video in sync.",
    ),
    size: int = typer.Option(224, "--size", help="Frame width and height in pixels (even)."),
    fps: float = typer.Option(25.0, "--fps", help="Frame rate."),
    corrupt: float = typer.Option(
        0.0,
        "--corrupt",
        help="Share of videos (0-1) given a known audio defect (swap, overlay, silence or offset, balanced), "
        "recorded in the defect columns of the ground truth. 0 writes a clean corpus.",
    ),
    quiet: bool = quiet_option(),
) -> None:
    """Write a synthetic corpus: objects appear where and when their sound plays.

    Each class pairs a shape and colour with a timbre and pitch. The ground truth (class, events, boxes, audio offset, audio defects) goes to OUT/ground_truth.parquet.
    """
    from avfeat.data.synth import write_corpus

    progress = None
    if not quiet:
        from tqdm import tqdm

        def progress(items):
            return tqdm(items, desc="synth", unit="video")

    report = write_corpus(
        out, videos=videos, seconds=seconds, classes=classes, seed=seed, offset=offset, size=size, fps=fps,
        corrupt=corrupt, progress=progress,
    )
    detail = f", {report.defective} with audio defects" if corrupt > 0 else ""
    typer.echo(f"wrote {report.videos} videos ({report.classes} classes{detail}) and {report.ground_truth} to {out}")


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
