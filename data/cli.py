"""`avfeat synth`: write a synthetic audio-visual corpus with known ground truth."""

from __future__ import annotations

from pathlib import Path

import typer

from avfeat.core.errors import InputError


def _check_out_dir(out: Path) -> None:
    """Raise InputError unless ``out`` is (or can become) a writable folder."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    probe = out
    while not probe.exists():  # nearest existing ancestor decides whether we can create it
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"cannot create {out}: {probe} is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        test = out / ".avfeat-write-test"
        test.write_bytes(b"")
        test.unlink()
    except OSError as error:
        raise InputError(f"cannot write to {out}: {error.strerror or error}") from None


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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write a synthetic corpus: objects appear where and when their sound plays.

    Each class pairs a shape and colour with a timbre and pitch. The ground truth (class, events, boxes, audio offset, audio defects) goes to OUT/ground_truth.parquet.
    """
    from avfeat.data import synth as synth_module

    try:
        synth_module.check_arguments(
            videos=videos, seconds=seconds, classes=classes, offset=offset, size=size, fps=fps, sample_rate=16000,
            corrupt=corrupt,
        )
    except ValueError as error:
        raise InputError(str(error)) from None
    _check_out_dir(out)

    progress = None
    if not quiet:
        from tqdm import tqdm

        def progress(items):
            return tqdm(items, desc="synth", unit="video")

    try:
        table = synth_module.make_corpus(
            out, videos=videos, seconds=seconds, classes=classes, seed=seed, offset=offset, size=size, fps=fps,
            progress=progress, corrupt=corrupt,
        )
    except OSError as error:
        raise InputError(f"cannot write to {out}: {error.strerror or error}") from None
    defective = sum(1 for defect in table.column("defect").to_pylist() if defect)
    detail = f", {defective} with audio defects" if corrupt > 0 else ""
    typer.echo(f"wrote {videos} videos ({classes} classes{detail}) and {synth_module.GROUND_TRUTH} to {out}")


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
