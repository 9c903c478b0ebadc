"""`avfeat extract` (videos → token cache) and `avfeat info` (what a cache holds)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from avfeat.data.cache import STORAGES


# How shards hold tokens (README "Compact storage"): the choices are the cache's own list.
Storage = Enum("Storage", {name: name for name in STORAGES}, type=str)


class DecodeMode(str, Enum):
    """Which frame serves each 1/fps step (extract/media.py)."""

    exact = "exact"
    keyframes = "keyframes"


class PoolPatches(str, Enum):
    """DINOv2 patches averaged in blocks of this side (1: none)."""

    one = "1"
    two = "2"

# Exit status of `avfeat extract` when the job finished but some inputs are recorded as failed.
EXIT_SOME_FAILED = 3


def extract(
    input: str = typer.Argument(..., help="A folder (searched recursively), a glob, a .txt list of paths, s3://, gs:// or http(s):// URLs of files, folders or globs, WebDataset .tar shards (brace patterns such as 'shards/{00000..00009}.tar'), or a CSV/Parquet/JSONL table with a 'path' column (optional: 'id', 'start' and 'end' seconds of a segment; other columns are kept as metadata)."),
    out: Path = typer.Option(..., "--out", "-o", help="Cache folder to create (an existing cache needs --resume or --overwrite)."),
    audio_model: Optional[str] = typer.Option(None, help="HuBERT: hub id, local folder, or random:<arch> [default: facebook/hubert-base-ls960, or the cache's]."),
    visual_model: Optional[str] = typer.Option(None, help="DINOv2: hub id, local folder, or random:<arch> [default: facebook/dinov2-small, or the cache's]."),
    audio_layer: Optional[int] = typer.Option(None, help="Hidden layer to cache (-1: final output, 0: embeddings) [default: -1, or the cache's]."),
    visual_layer: Optional[int] = typer.Option(None, help="Hidden layer to cache (-1: final output with its layer norm) [default: -1, or the cache's]."),
    fps: Optional[float] = typer.Option(None, help="Frames per second to sample, by timestamp [default: 1, or the cache's]."),
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
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option(
        "auto",
        help="Compute dtype: auto (bfloat16 on GPUs and on CPUs with native bfloat16; on other x86 CPUs with AVX2, int8; else float32), "
        "float32, float16, bfloat16, int8 (CPU only: the backbones' linear layers dynamically quantized; token cosine to float32 > 0.998).",
    ),
    shard_size: int = typer.Option(64, min=1, help="Videos per shard (the unit of commit and resume)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Process at most this many new videos."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Try again the videos recorded as failed."),
    layout: Optional[str] = typer.Option(None, "--layout", help="INPUT is a published dataset CSV: vggsound (ytid,start,label,split; 10 s clips) or audioset (YTID, start, end, labels); see README \"Your own data\"."),
    media_dir: Optional[Path] = typer.Option(None, "--media-dir", help="With --layout: the folder of full-length videos named YTID.<ext> [default: the CSV's folder]."),
    refresh: bool = typer.Option(False, "--refresh", help="Extract again the files whose size or mtime changed since they were cached (without it they are reported and their old tokens kept)."),
    timeout: float = typer.Option(600.0, min=1.0, help="Seconds one file may take to decode."),
    resume: bool = typer.Option(False, "--resume", help="Add to the cache in --out: skip what it holds, extract the rest with its settings."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the cache in --out (only avfeat's own files there are removed)."),
    repair: bool = typer.Option(False, "--repair", help="With --resume: first forget the shards whose bytes differ from their recorded SHA-256 (see `avfeat info --verify`), so their videos are extracted again."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
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

    from dataclasses import asdict

    from avfeat.core.devices import resolve_device
    from avfeat.core.lock import writer_lock
    from avfeat.core.outputs import OutputMode, prepare_output
    from avfeat.core.values import check_number
    from avfeat.data.cache import CACHE_OWN, CONFIG_DEFAULTS, CONFIG_FILE, CONFIG_MARKS, check_compute_dtype, check_config, compute_dtype
    from avfeat.core.errors import InputError
    from avfeat.extract.encoder import Encoder, resolve_dtype
    from avfeat.extract.inputs import from_layout, list_inputs
    from avfeat.extract.job import ExtractConfig, Extractor, RunOptions

    if dtype not in ("auto", "float32", "float16", "bfloat16", "int8"):
        raise InputError(f"unknown --dtype {dtype!r} (auto, float32, float16, bfloat16, int8)")
    resolve_dtype(dtype, str(resolve_device(device)))  # --dtype int8 on a GPU is refused here, before anything is written
    check_number("--fps", fps, minimum=0.01, inclusive=True, maximum=1000.0)
    check_number("--timeout", timeout)
    if layout is not None:
        if not Path(input).is_file():
            raise InputError(f"input {input} does not exist (--layout takes the dataset's CSV file)")
        inputs = from_layout(Path(input), layout, media_dir or Path(input).parent)
    elif media_dir is not None:
        raise InputError("--media-dir goes with --layout")
    else:
        inputs = list_inputs(input)
    # One writer at a time: the lock is taken before --overwrite removes anything and held until
    # the last shard is committed (Extractor.run takes it too, for callers other than this command).
    with writer_lock(out, "cache"):
        mode = prepare_output(out, marker=CONFIG_FILE, kind="cache", resume=resume, overwrite=overwrite, own=CACHE_OWN, marker_keys=CONFIG_MARKS)
        if repair:
            _repair(out, mode)
        given = {"audio_model": audio_model, "visual_model": visual_model, "audio_layer": audio_layer, "visual_layer": visual_layer, "fps": fps,
                 "storage": storage.value if storage else None, "pool_patches": int(pool_patches.value) if pool_patches else None,
                 "decode_mode": decode_mode.value if decode_mode else None}
        given = {key: value for key, value in given.items() if value is not None}
        # A cache of before --storage/--pool-patches is float16 and unpooled (CONFIG_DEFAULTS).
        stored = {**CONFIG_DEFAULTS, **json.loads((out / CONFIG_FILE).read_text())} if mode is OutputMode.RESUME else {}
        config = ExtractConfig(**{**{k: v for k, v in stored.items() if k in ExtractConfig.__dataclass_fields__}, **given})
        layout = check_config(out, asdict(config), only_given_keys=True)  # before minutes of model loading
        if dtype == "auto" and mode is OutputMode.RESUME:
            dtype = compute_dtype(layout) or dtype  # auto keeps what computed the cache's tokens (auto's choice may have changed since)
        options = RunOptions(
            batch_size=batch_size, workers=workers, device=device, dtype=dtype, shard_size=shard_size,
            limit=limit, retry_failed=retry_failed, refresh=refresh, timeout=timeout, quiet=quiet,
        )
        if ray is None:  # a Ray run's workers pick their dtype; each shard is checked as it is written
            check_compute_dtype(layout, resolve_dtype(dtype, str(resolve_device(device))))
        if ray is not None:
            from avfeat.extract.ray_job import import_ray

            import_ray()  # says how to install it, before models load
        # With --ray the models run on the cluster's actors; here they only describe the tensors.
        encoder = Encoder.describe(config) if ray is not None else Encoder(config, device=device, dtype=dtype, batch_size=batch_size)
        extractor = Extractor(config, options, encoder)
        for spec in (config.audio_model, config.visual_model):
            if spec.startswith("random:"):
                typer.echo(f"note: {spec} has random weights (for tests, demos and benchmarks); its tokens carry no learned meaning", err=True)

        bar = tqdm(unit="video", desc="extract", disable=quiet, dynamic_ncols=True)
        media_seconds = 0.0

        def progress(count: int, seconds: float) -> None:
            nonlocal media_seconds
            media_seconds += seconds
            bar.update(count)
            elapsed = bar.format_dict["elapsed"] or 1e-9
            bar.set_postfix_str(f"{media_seconds / elapsed:.1f} media-s/s", refresh=False)

        with bar:
            summary = extractor.run(inputs, out, progress=progress, on_plan=lambda total: bar.reset(total=total), ray_address=ray)
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
    if verify:
        return _verify(cache, as_json)
    from avfeat.data.cache import Cache

    with Cache(cache) as store:
        damaged = store.verify(hashes=False)  # a deleted or truncated shard, without reading any
        records = store.records()
        ok = [r for r in records if r.ok]
        hours = sum(r.duration for r in ok) / 3600
        shards = store.layout.shards()
        size = sum(p.stat().st_size for p in shards.values()) + sum(p.stat().st_size for p in store.layout.parts().values())
        report = {
            "path": str(cache),
            "config": store.config,
            "videos": len(records),
            "status_counts": store.status_counts(),
            "media_hours": hours,
            "shards": len(shards),
            "shards_committed": len(store.layout.parts()),
            "bytes": size,
            "bytes_per_media_hour": size / hours if hours else None,
            "storage": store.config.get("storage", "float16"),  # caches of before --storage hold float16
            "pool_patches": int(store.config.get("pool_patches", 1)),
            "audio_tokens": sum(r.audio_length for r in ok),
            "frames": sum(r.visual_length for r in ok),
            "failures": [{"video_id": r.video_id, "path": r.path, "status": r.status, "error": r.error} for r in records if not r.ok],
            "video_list": [{"video_id": r.video_id, "status": r.status, "duration": r.duration, "path": r.path} for r in records],
            "damaged": [{"shard": d.path.name, "problem": d.problem, "video_ids": d.video_ids} for d in damaged],
        }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        _refuse_damaged(cache, damaged, report["shards_committed"])
        return
    if videos:
        for entry in report["video_list"]:
            typer.echo(f"{entry['video_id']}\t{entry['status']}\t{entry['duration']:.2f}\t{entry['path']}")
        return
    config = store.config
    counts = ", ".join(f"{status} {count}" for status, count in report["status_counts"].items()) or "none"
    typer.echo(f"cache      {cache}")
    typer.echo(f"audio      {config['audio_model']} layer {config['audio_layer']} ({config['audio_dim']} dims, {config['audio_token_rate']:g} tokens/s)")
    typer.echo(f"visual     {config['visual_model']} layer {config['visual_layer']} ({config['visual_dim']} dims, {config['visual_tokens']} tokens/frame, {config['fps']:g} fps)")
    typer.echo(f"tokens     {_storage_line(report)}")
    typer.echo(f"videos     {report['videos']} ({counts})")
    typer.echo(f"media      {hours:.3f} h, {report['audio_tokens']} audio tokens, {report['frames']} frames")
    per_hour = f", {report['bytes_per_media_hour'] / 2**20:.1f} MB per media-hour" if hours else ""
    typer.echo(f"storage    {report['shards']} shards, {size / 2**20:.1f} MB{per_hour}")
    for failure in report["failures"][:20]:
        typer.echo(f"failed     {failure['status']:<12} {failure['path']}: {failure['error']}")
    if len(report["failures"]) > 20:
        typer.echo(f"           ... and {len(report['failures']) - 20} more (--json lists all)")
    for damage in damaged:
        typer.echo(damage.line())
    _refuse_damaged(cache, damaged, report["shards_committed"])


def _storage_line(report: dict) -> str:
    """What `info` says of the token storage and the patch pooling."""
    read_as = report["config"].get("storage_dtype", "float16")
    text = "stored as float16" if report["storage"] == "float16" else f"stored as {report['storage']} with per-token float32 scales, read as {read_as}"
    if report["pool_patches"] > 1:
        grid = "x".join(str(side) for side in report["config"].get("visual_grid") or [])
        text += f"; patches pooled {report['pool_patches']}x{report['pool_patches']} ({grid} grid)"
    return text


def _refuse_damaged(cache: Path, damaged: list, shards: int, what: str = "missing or truncated") -> None:
    from avfeat.core.errors import CacheError

    if damaged:
        raise CacheError(f"{len(damaged)} of {shards} shards are {what}; `avfeat extract INPUT --out {cache} --resume --repair` extracts their videos again")


def _repair(out: Path, mode) -> None:
    """Drop the damaged shards (and their manifest parts) before a resumed run re-extracts them."""
    from avfeat.core.outputs import OutputMode
    from avfeat.data.cache import Cache, remove_damaged
    from avfeat.core.errors import InputError

    if mode is not OutputMode.RESUME:
        raise InputError("--repair works on an existing cache: pass it with --resume")
    with Cache(out) as store:
        damaged = store.verify()
    for damage in damaged:
        typer.echo(f"{damage.line()}: extracting its {len(damage.video_ids)} videos again", err=True)
    remove_damaged(store.layout, damaged)


def _verify(cache: Path, as_json: bool) -> None:
    from avfeat.data.cache import Cache

    with Cache(cache) as store:
        damaged = store.verify()
        shards = len(store.layout.parts())
    if as_json:
        typer.echo(json.dumps({"shards": shards, "damaged": [
            {"shard": d.path.name, "problem": d.problem, "video_ids": d.video_ids} for d in damaged]}, indent=2))
    else:
        for damage in damaged:
            typer.echo(damage.line())
    _refuse_damaged(cache, damaged, shards, "damaged")
    if not as_json:
        typer.echo(f"verified {shards} shards: every one matches its recorded SHA-256")


def expand_ray_flag(args: list[str]) -> list[str]:
    """Let ``--ray`` stand alone: give it the value ``local`` unless an address follows it."""
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
