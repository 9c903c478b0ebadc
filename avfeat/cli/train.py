"""`avfeat train-head` (contrastive heads on a token cache) and `avfeat attention-map`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from avfeat.cli.options import device_option, overwrite_option, quiet_option, resume_option
from avfeat.data.configs import AGGREGATIONS, HEAD_KINDS

NPROC_HELP = ("Train with N processes on this machine (one per GPU, or gloo on the CPU), as `torchrun --nproc-per-node N -m avfeat train-head ...` does; "
              "--batch-size stays the global batch and must divide by N.")
NNODES_HELP = ("Machines in the run: start the same command on each, with its --node-rank and the same --rdzv-endpoint "
               "(torchrun's c10d rendezvous); --nproc is per machine and --batch-size must divide by nnodes x nproc.")


def train_head(
    cache: Path = typer.Argument(..., help="A cache folder written by `avfeat extract`."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint folder to write (heads.safetensors, config.json, state, metrics, curves)."),
    window: float = typer.Option(2.0, help="Window length in seconds: audio tokens and the frames of the same span."),
    hop: Optional[float] = typer.Option(None, help="Hop in seconds recorded for indexing (default: window / 2)."),
    head: Literal[HEAD_KINDS] = typer.Option("mlp", help="mlp (LayerNorm + a small two-layer MLP) or linear (LayerNorm + Linear)."),
    dim: int = typer.Option(256, min=1, help="Dimensions of the shared space."),
    aggregation: Literal[AGGREGATIONS] = typer.Option("max-mean", help="Clip score: max-mean, mean-pool or cls."),
    epochs: Optional[int] = typer.Option(None, min=1, show_default=False, help="Epochs (see --passes-per-epoch). Default: 10, more if that makes fewer than 200 steps."),
    steps: Optional[int] = typer.Option(None, min=1, help="Total optimizer steps; overrides --epochs (the last epoch may be partial)."),
    passes_per_epoch: Optional[int] = typer.Option(
        None, min=1, show_default=False,
        help="Passes over the training videos (one window each) per epoch. Default: enough that an epoch draws as many windows as the training videos "
        "hold end to end, and that 10 epochs make at least 200 steps.",
    ),
    batch_size: Optional[int] = typer.Option(
        None, min=2, show_default=False,
        help="Windows per batch, each from a different video. Default: 64, or the largest power of two that leaves 8 batches per pass over the training videos.",
    ),
    lr: float = typer.Option(1e-2, help="Peak AdamW learning rate (linear warm-up, cosine decay)."),
    weight_decay: float = typer.Option(0.01, help="AdamW weight decay."),
    warmup: float = typer.Option(0.05, help="Fraction of the steps spent warming up."),
    clip: float = typer.Option(1.0, help="Gradient-norm clipping (0: off)."),
    temperature: float = typer.Option(0.07, help="Initial InfoNCE temperature (learned, clamped at 0.01)."),
    temporal_negatives: Optional[bool] = typer.Option(
        None, "--temporal-negatives/--no-temporal-negatives", show_default=False,
        help="Add the same video shifted in time as an extra negative (teaches synchronization). "
        "Default: on when most training videos last the window plus --min-shift or more.",
    ),
    min_shift: float = typer.Option(1.0, help="Smallest shift in seconds of a temporal negative."),
    offdiag_weight: float = typer.Option(0.0, help="Regulariser: weight of the mean off-diagonal score."),
    centroid_weight: float = typer.Option(0.0, help="Regulariser: weight of the squared norm of the mean projected token (against collapse)."),
    val_fraction: float = typer.Option(0.1, help="Fraction of videos held out for validation."),
    val_windows: int = typer.Option(4, min=1, help="Fixed, evenly spaced validation windows per validation video."),
    seed: int = typer.Option(0, help="Seed of the split, the initialisation and the sampling."),
    exclude: Optional[Path] = typer.Option(
        None, "--exclude", help="An audit table (`avfeat audit`) of this cache: leave out of training and validation the videos whose p_match is below --min-correspondence."),
    min_correspondence: Optional[float] = typer.Option(
        None, "--min-correspondence", show_default=False, help="With --exclude: the p_match, in [0, 1], a video needs to be trained on. Default: 0.5."),
    weight_by: Optional[Path] = typer.Option(
        None, "--weight-by", help="An audit table of this cache: weight each training video's positive pair in the loss by its p_match (scaled to mean 1)."),
    device: str = device_option("heads train"),
    memory_limit: Optional[str] = typer.Option(None, help="Load the tokens into (GPU) memory when they fit under this size, e.g. 8GB (default: half the available memory; 0: always stream)."),
    workers: int = typer.Option(2, min=0, help="DataLoader processes that read HDF5 when streaming."),
    resume: bool = resume_option("Continue the run in --out exactly where its last epoch ended."),
    overwrite: bool = overwrite_option("Replace an existing checkpoint in --out."),
    quiet: bool = quiet_option("No progress bar or per-epoch lines."),
    nproc: int = typer.Option(1, min=1, help=NPROC_HELP),
    nnodes: int = typer.Option(1, "--nnodes", help=NNODES_HELP),
    node_rank: Optional[int] = typer.Option(None, "--node-rank", help="With --nnodes: this machine's number, 0 on the machine at --rdzv-endpoint, 1 .. N-1 on the others."),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint", help="With --nnodes: HOST:PORT of node 0, where the machines meet (a free port every machine can reach)."),
    rdzv_id: Optional[str] = typer.Option(None, "--rdzv-id", help="With --nnodes: the run's name, the same on every machine (default: avfeat)."),
) -> None:
    """Train contrastive projection heads on cached HuBERT and DINOv2 tokens.

    Several GPUs: add --nproc N, or start the command under torchrun; several machines: add --nnodes.
    """
    import sys

    from avfeat.align.distributed import Nodes
    from avfeat.align.run import train_heads

    settings = dict(
        window=window, hop=hop, dim=dim, head=head, aggregation=aggregation, epochs=epochs, steps=steps,
        passes_per_epoch=passes_per_epoch, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup,
        clip=clip, temperature=temperature, temporal_negatives=temporal_negatives, min_shift=min_shift,
        offdiag_weight=offdiag_weight, centroid_weight=centroid_weight, val_fraction=val_fraction,
        val_windows=val_windows, seed=seed,
    )
    run = train_heads(
        cache, out, settings, exclude=exclude, min_correspondence=min_correspondence, weight_by=weight_by,
        device=device, memory_limit=memory_limit, workers=workers, resume=resume, overwrite=overwrite, quiet=quiet,
        nproc=nproc, nodes=Nodes(nnodes, node_rank, rdzv_endpoint, rdzv_id), args=sys.argv[1:],
        log=lambda line: typer.echo(line, err=True) if not quiet else None,
        warn=lambda line: typer.echo(f"avfeat: warning: {line}", err=True),
    )
    if run.exit_code:
        raise typer.Exit(run.exit_code)
    if run.summary is not None:
        typer.echo(run.summary)


def attention_map(
    cache: Path = typer.Argument(..., help="The token cache."),
    video_id: str = typer.Argument(..., help="A video of the cache: its id (`avfeat info CACHE --videos` lists them), or its file's path, name or stem when that names one video."),
    heads: Path = typer.Option(..., "--heads", help="A checkpoint folder written by `avfeat train-head`."),
    time: str = typer.Option(..., "--time", "-t", help="Start of the audio window: seconds, m:ss or h:mm:ss."),
    out: Path = typer.Option(Path("map.png"), "--out", "-o", help="PNG to write."),
    device: str = device_option("heads run"),
) -> None:
    """Where the sound is: a heat map of audio-patch similarity over the frame nearest --time."""
    from avfeat.align.plots import attention_map_file
    from avfeat.core.values import parse_time

    notes = attention_map_file(cache, video_id, heads, parse_time(time), out, device=device)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("train-head")(train_head)
    app.command("attention-map")(attention_map)
