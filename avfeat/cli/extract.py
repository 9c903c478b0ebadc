"""`avfeat extract` (videos → token cache) and `avfeat info` (what a cache holds)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Literal, Optional

import typer

from avfeat.cli.options import device_option, overwrite_option, quiet_option, resume_option
from avfeat.data.configs import DECODE_MODES, POOL_FACTORS
from avfeat.data.codecs import STORAGES
from avfeat.extract.inputs.tables import LAYOUTS
from avfeat.extract.models.devices import COMPUTE_DTYPES

# The choices are the library's own lists (avfeat.data.configs).
# How shards hold tokens (README "Compact storage").
Storage = Enum("Storage", {name: name for name in STORAGES}, type=str)
# Which frame serves each 1/fps step (extract/media/frames.py).
DecodeMode = Enum("DecodeMode", {name: name for name in DECODE_MODES}, type=str)
# DINOv2 patches averaged in blocks of this side (1: none).
PoolPatches = Enum("PoolPatches", {f"side{factor}": str(factor) for factor in POOL_FACTORS}, type=str)

# Exit status of `avfeat extract` when the job finished but some inputs are recorded as failed.
EXIT_SOME_FAILED = 3


def extract(
    input: str = typer.Argument(..., help="A folder (searched recursively), a glob, a .txt list of paths, s3://, gs:// or http(s):// URLs of files, folders or globs, WebDataset .tar shards (brace patterns such as 'shards/{00000..00009}.tar'), or a CSV/Parquet/JSONL table with a 'path' column (optional: 'id', 'start' and 'end' seconds of a segment; other columns are kept as metadata)."),
    out: Path = typer.Option(..., "--out", "-o", help="Cache folder to create (an existing cache needs --resume or --overwrite)."),
    audio_model: Optional[str] = typer.Option(None, help="HuBERT: hub id, local folder, or random:<arch> [default: facebook/hubert-base-ls960, or the cache's]."),
    visual_model: Optional[str] = typer.Option(None, help="DINOv2: hub id, local folder, or random:<arch> [default: facebook/dinov2-small, or the cache's]."),
    audio_layer: Optional[int] = typer.Option(None, help="Hidden layer to cache (-1: final output, 0: embeddings) [default: -1, or the cache's]."),
    visual_layer: Optional[int] = typer.Option(None, help="Hidden layer to cache (-1: final output with its layer norm) [default: -1, or the cache's]."),
    fps: Optional[float] = typer.Option(None, help="Frames per second to sample, by timestamp [default: 2, or the cache's]."),
    storage: Optional[Storage] = typer.Option(None, "--storage", help="Token storage: float16, or int8 with one float32 scale per token (about half the bytes; read back as float16) [default: float16, or the cache's]."),
    decode_mode: Optional[DecodeMode] = typer.Option(
        None, "--decode-mode",
        help="exact: the frame on screen at each 1/fps step; keyframes: decode only keyframes, each step takes the last keyframe at or before it "
        "(several times cheaper on long-GOP video, but a frame can be one GOP, often 2-10 s, older than its step; each frame keeps its true time) "
        "[default: exact, or the cache's].",
    ),
    pool_patches: Optional[PoolPatches] = typer.Option(None, "--pool-patches", help="2: average each 2x2 block of DINOv2 patches (CLS kept): 1 + P/4 tokens per frame; the grid side must be even [default: 1, or the cache's]."),
    batch_size: int = typer.Option(32, min=1, help="Frames per visual forward pass."),
    workers: int = typer.Option(2, min=0, help="Decoding processes (0: decode in this process)."),
    device: str = device_option("backbones run"),
    dtype: Literal[COMPUTE_DTYPES] = typer.Option(
        "auto",
        help="Compute dtype: auto (bfloat16 on GPUs and on CPUs with native bfloat16; on other x86 CPUs with AVX2, int8; else float32), "
        "float32, float16, bfloat16, int8 (CPU only: the backbones' linear layers dynamically quantized; token cosine to float32 > 0.998).",
    ),
    shard_size: int = typer.Option(64, min=1, help="Videos per shard (the unit of commit and resume)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Process at most this many new videos."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Try again the videos recorded as failed."),
    layout: Optional[Literal[LAYOUTS]] = typer.Option(None, "--layout", help="INPUT is a published dataset CSV: vggsound (ytid,start,label,split; 10 s clips) or audioset (YTID, start, end, labels); see README \"Your own data\"."),
    media_dir: Optional[Path] = typer.Option(None, "--media-dir", help="With --layout: the folder of full-length videos named YTID.<ext> [default: the CSV's folder]."),
    refresh: bool = typer.Option(False, "--refresh", help="Extract again the files whose size or mtime changed since they were cached (without it they are reported and their old tokens kept)."),
    timeout: float = typer.Option(600.0, min=1.0, help="Seconds one file may take to decode."),
    resume: bool = resume_option("Add to the cache in --out: skip what it holds, extract the rest with its settings."),
    overwrite: bool = overwrite_option("Replace the cache in --out (only avfeat's own files there are removed)."),
    repair: bool = typer.Option(False, "--repair", help="With --resume: first forget the shards whose bytes differ from their recorded SHA-256 (see `avfeat info --verify`), so their videos are extracted again."),
    quiet: bool = quiet_option(),
    ray: Optional[str] = typer.Option(
        None, "--ray", metavar="[ADDRESS]",
        help="Run as a Ray Data pipeline: `--ray` alone starts a Ray on this machine; `--ray ADDRESS` "
        "(auto, host:port, ray://host:port) joins a cluster. Same cache, same resume. Needs avfeat[ray].",
    ),
) -> None:
    """Decode videos, run frozen HuBERT and DINOv2, and cache their tokens (resumable).

    Exit status: 0 when every input is cached, 3 when the job finished but some inputs are
    recorded as failed (see `avfeat info`) or two different files would share an id, 1 on an
    error that stopped the job.
    """
    from tqdm import tqdm

    from avfeat.extract.job import RunOptions, prepare_extraction

    given = {"audio_model": audio_model, "visual_model": visual_model, "audio_layer": audio_layer, "visual_layer": visual_layer, "fps": fps,
             "storage": storage.value if storage else None, "pool_patches": int(pool_patches.value) if pool_patches else None,
             "decode_mode": decode_mode.value if decode_mode else None}
    options = RunOptions(
        batch_size=batch_size, workers=workers, device=device, dtype=dtype, shard_size=shard_size,
        limit=limit, retry_failed=retry_failed, refresh=refresh, timeout=timeout, quiet=quiet,
    )
    with prepare_extraction(
        input, out, given, options, layout=layout, media_dir=media_dir, resume=resume, overwrite=overwrite, repair=repair,
        ray_address=ray, note=lambda line: typer.echo(line, err=True),
    ) as extraction:
        bar = tqdm(unit="video", desc="extract", disable=quiet, dynamic_ncols=True)
        media_seconds = 0.0

        def progress(count: int, seconds: float) -> None:
            nonlocal media_seconds
            media_seconds += seconds
            bar.update(count)
            elapsed = bar.format_dict["elapsed"] or 1e-9
            bar.set_postfix_str(f"{media_seconds / elapsed:.1f} media-s/s", refresh=False)

        with bar:
            summary = extraction.run(progress=progress, on_plan=lambda total: bar.reset(total=total))
    for line in summary.lines():
        typer.echo(line)
    if summary.any_failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def info(
    cache: Path = typer.Argument(..., help="A cache folder written by `avfeat extract`."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text (with every video's id)."),
    videos: bool = typer.Option(False, "--videos", help="List every video: id, status, duration, path."),
    verify: bool = typer.Option(False, "--verify", help="Check every shard against the size and SHA-256 its manifest recorded (exit 1 when one is damaged)."),
) -> None:
    """Summarise a token cache: models, videos by status, hours, bytes; --videos lists the ids."""
    from avfeat.data.summary import cache_summary, refuse_damaged

    if verify:
        return _verify(cache, as_json)
    report = cache_summary(cache, videos=as_json or videos)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))  # default: metadata dates and such
    elif videos:
        listing = report["video_list"]
        for first in range(0, len(listing), 10_000):  # one write per 10,000 lines: a million take seconds
            typer.echo("\n".join(f"{e['video_id']}\t{e['status']}\t{e['duration']:.2f}\t{e['path']}" for e in listing[first:first + 10_000]))
        return
    else:
        for line in _summary_lines(report):
            typer.echo(line)
    refuse_damaged(cache, report["damaged"], report["shards_committed"])


def _summary_lines(report: dict) -> list[str]:
    """`info`'s text: what ``cache_summary`` found, one line per subject."""
    from avfeat.data.shards import damage_line

    config, hours = report["config"], report["media_hours"]
    counts = ", ".join(f"{status} {count}" for status, count in report["status_counts"].items()) or "none"
    per_hour = f", {report['bytes_per_media_hour'] / 2**20:.1f} MB per media-hour" if hours else ""
    lines = [
        f"cache      {report['path']}",
        f"audio      {config['audio_model']} layer {config['audio_layer']} ({config['audio_dim']} dims, {config['audio_token_rate']:g} tokens/s)",
        f"visual     {config['visual_model']} layer {config['visual_layer']} ({config['visual_dim']} dims, {config['visual_tokens']} tokens/frame, {config['fps']:g} fps)",
        f"tokens     {_storage_line(report)}",
        f"videos     {report['videos']} ({counts})",
        f"media      {hours:.3f} h, {report['audio_tokens']} audio tokens, {report['frames']} frames",
        f"storage    {report['shards']} shards, {report['bytes'] / 2**20:.1f} MB{per_hour}",
    ]
    lines += [f"failed     {failure['status']:<12} {failure['path']}: {failure['error']}" for failure in report["failures"][:20]]
    if len(report["failures"]) > 20:
        lines.append(f"           ... and {len(report['failures']) - 20} more (--json lists all)")
    return lines + [damage_line(**damage) for damage in report["damaged"]]


def _storage_line(report: dict) -> str:
    """What `info` says of the token storage and the patch pooling."""
    read_as = report["config"].get("storage_dtype", "float16")
    text = "stored as float16" if report["storage"] == "float16" else f"stored as {report['storage']} with per-token float32 scales, read as {read_as}"
    if report["pool_patches"] > 1:
        grid = "x".join(str(side) for side in report["config"].get("visual_grid") or [])
        text += f"; patches pooled {report['pool_patches']}x{report['pool_patches']} ({grid} grid)"
    return text


def _verify(cache: Path, as_json: bool) -> None:
    """`info --verify`: every shard against its recorded SHA-256."""
    from avfeat.data.shards import damage_line
    from avfeat.data.summary import refuse_damaged, verify_cache

    result = verify_cache(cache)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        for damage in result["damaged"]:
            typer.echo(damage_line(**damage))
    refuse_damaged(cache, result["damaged"], result["shards"], "damaged")
    if not as_json:
        typer.echo(f"verified {result['shards']} shards: every one matches its recorded SHA-256")


def expand_ray_flag(args: list[str]) -> list[str]:
    """Let ``--ray`` stand alone: give it the value ``local`` unless an address follows it."""
    if "--ray" not in args:  # the Ray job's module imports the decoders: only for a Ray run
        return list(args)
    from avfeat.extract.ray_job import LOCAL, looks_like_address

    expanded = list(args)
    for position, arg in enumerate(expanded):
        if arg == "--ray":
            following = expanded[position + 1] if position + 1 < len(expanded) else None
            if following is None or not looks_like_address(following):
                expanded.insert(position + 1, LOCAL)
            break
    return expanded


def register(app: typer.Typer) -> None:
    app.command()(extract)
    app.command()(info)
