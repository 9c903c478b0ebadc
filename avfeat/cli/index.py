"""`avfeat index` (cache + heads → FAISS indexes), `avfeat search` and `avfeat sync`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Literal, Optional

import typer

from avfeat.cli.options import device_option, overwrite_option, quiet_option
from avfeat.index.export import MODALITIES


def index(
    cache: Path = typer.Argument(..., help="A cache folder written by `avfeat extract`."),
    heads: Path = typer.Option(..., "--heads", help="Heads checkpoint written by `avfeat train-head`."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to write (an existing index needs --overwrite or --update)."),
    window: Optional[float] = typer.Option(None, help="Window length in seconds (default: the heads' window)."),
    hop: Optional[float] = typer.Option(None, help="Seconds between window starts (default: the heads' hop)."),
    factory: Optional[str] = typer.Option(None, help="FAISS factory string, e.g. 'HNSW32,Flat' or 'IVF4096,PQ32' (default: chosen from the collection size)."),
    memory_budget: Optional[str] = typer.Option(None, help="Memory the index may take, e.g. 4GB (default: half the machine's memory); IVF-PQ when raw vectors do not fit."),
    shards: Optional[int] = typer.Option(None, help="Split each modality into N index files over contiguous ranges of windows, trained once; searched together, one GPU per shard where there are several (default 1)."),
    overwrite: bool = overwrite_option("Replace the index in --out (atomically: the old one stays until the new one is complete)."),
    update: bool = typer.Option(False, "--update", help="Add the cache's videos that the index in --out lacks, with its window, hop and trained index (no retraining); same heads, and a cache holding all its videos."),
    quiet: bool = quiet_option(),
) -> None:
    """Project every window of the cache through the heads and write per-modality FAISS indexes."""
    from avfeat.index.job import index_cache

    done = index_cache(cache, heads, out, window=window, hop=hop, factory=factory, memory_budget=memory_budget,
                       shards=shards, overwrite=overwrite, update=update, quiet=quiet)
    if update:
        if not done.videos:
            typer.echo(f"nothing to add: {out} already holds every video of {cache} ({done.meta['videos']} videos); left unchanged")
            return
        counts = ", ".join(f"{m} {info['count']}" for m, info in done.meta["modalities"].items())
        typer.echo(f"added {done.videos} videos ({done.windows} windows) to {out}: now {done.meta['videos']} videos, windows {counts}")
        return
    for modality, info in done["modalities"].items():
        tuned = ", ".join(f"{k}={v}" for k, v in info["params"].items())
        recall = f", recall@10 {info['recall_at_10']:.3f} vs exact" if info["recall_at_10"] is not None else ""
        split = f" in {len(info['shards'])} shards" if "shards" in info else ""
        typer.echo(f"{modality:<7} {info['count']} windows, {info['factory']}{' (' + tuned + ')' if tuned else ''}{recall}{split}")
    typer.echo(f"wrote {out} ({done['videos']} videos, {done['window']:g} s windows every {done['hop']:g} s)")


def _compact(metadata: dict) -> str:
    """A hit's metadata on one line: ``label=dog split=test`` (null values left out)."""
    return " ".join(f"{name}={value}" for name, value in metadata.items() if value is not None)


def _print_hits(hits, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([hit.to_dict() for hit in hits], indent=2, default=str))  # default: metadata dates and such
        return
    width = max([len("video_id"), *(len(hit.video_id) for hit in hits)])
    shown = any(_compact(hit.metadata) for hit in hits)  # a metadata column only where there is some
    typer.echo(f"{'rank':>4}  {'score':>7}  {'video_id':<{width}}  {'start':>8}  {'end':>8}  path" + ("  metadata" if shown else ""))
    for hit in hits:
        extra = f"  {_compact(hit.metadata)}" if shown else ""
        typer.echo(f"{hit.rank:>4}  {hit.score:>7.4f}  {hit.video_id:<{width}}  {hit.start:>8.2f}  {hit.end:>8.2f}  {hit.path}{extra}")


def _print_candidates(candidates, threshold: float, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([c.to_dict() for c in candidates], indent=2))
        if not candidates:  # stdout stays a JSON list; the reason goes beside it
            typer.echo("not found: no indexed video holds this clip" + (f" (calibrated threshold {threshold:.4f})" if threshold is not None else ""), err=True)
        return
    if not candidates:  # a --server answer carries no threshold
        typer.echo("not found: no indexed video holds this clip" + (f" (best score below the calibrated threshold {threshold:.4f})" if threshold is not None else ""))
        return
    typer.echo(f"{'rank':>4}  {'score':>7}  {'votes':>5}  {'time':>8}  path")
    for rank, c in enumerate(candidates, 1):
        typer.echo(f"{rank:>4}  {c.score:>7.4f}  {c.votes:>5}  {c.time:>8.2f}  {c.path}")


def _print_result(result, as_json: bool) -> None:
    """One query's answer (``avfeat.index.batch.QueryResult``): a table or JSON; in a batch, a
    headed block, or one JSON line; a batch's failed query is one line on stderr (and a JSON
    line with its error)."""
    if result.error is not None:
        typer.echo(f"avfeat: error: query {result.text}: {result.error}", err=True)
        if as_json:
            typer.echo(json.dumps({"query": result.text, "error": result.error}))
        return
    if result.batch and as_json:
        if result.located:
            body = {"threshold": result.threshold, "candidates": [c.to_dict() for c in result.candidates]}
        else:
            body = {"hits": [hit.to_dict() for hit in result.hits]}
        typer.echo(json.dumps({"query": result.text, "side": result.side, **body}, default=None if result.located else str))
        return
    if result.batch:
        how = f"{result.side}, located" if result.located else f"{result.side} → {'visual' if result.side == 'audio' else 'audio'}"
        typer.echo(f"{'' if result.first else chr(10)}== {result.text} ({how}) ==")
    if result.located:
        _print_candidates(result.candidates, result.threshold, as_json)
    else:
        _print_hits(result.hits, as_json)


def search(
    index_dir: Optional[Path] = typer.Argument(None, metavar="INDEX", help="An index folder written by `avfeat index` (none with --server: every argument is a query)."),
    query: Optional[List[str]] = typer.Argument(
        None, metavar="QUERY",
        help="Videos, audio files (wav, flac, mp3), images (png, jpg), or VIDEO_ID@START-END from the cache; several are searched with one load.",
    ),
    queries: Optional[Path] = typer.Option(
        None, "--queries", metavar="LIST",
        help="A text file of queries, one a line ('#' starts a comment line; relative paths are from the file's folder); after any QUERY arguments.",
    ),
    side: Optional[Literal[MODALITIES]] = typer.Option(None, "--from", help="Query side, audio or visual; the other modality is searched (default: audio, visual for images)."),
    k: int = typer.Option(10, "-k", min=1, help="Hits (or --locate candidates) to return."),
    rerank: Optional[int] = typer.Option(
        None, min=0, show_default=False,
        help="Rescore the top N hits with the heads' exact clip score (max-mean) over their cached tokens. Default: 50 "
        "(when the cache is there); 0 turns it off.",
    ),
    locate: bool = typer.Option(False, "--locate", help="Find the video and time the query clip was cut from (or say it is not found)."),
    where: Optional[List[str]] = typer.Option(
        None, "--where", metavar="COLUMN=VALUE",
        help="Keep only hits whose column (metadata such as label, or video_id, path) has this value, compared as text; repeat to require several. Applied before the top k are cut.",
    ),
    per_video: bool = typer.Option(False, "--per-video", help="One hit per video: its best window (more are fetched until k videos are found)."),
    exclude_video: Optional[str] = typer.Option(None, "--exclude-video", metavar="VIDEO_ID", help="Leave this video's windows out of the hits (e.g. the query's own)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table (each hit with its metadata object); JSON Lines, one object per query, for several queries or --queries."),
    thumbs: Optional[Path] = typer.Option(None, help="Save a contact sheet of the hits' (or located candidates') frames to this PNG (missing folders are created; NAME-1.png, NAME-2.png, ... for several queries)."),
    heads: Optional[Path] = typer.Option(None, help="Heads checkpoint (default: the one the index was built with; others are refused)."),
    cache: Optional[Path] = typer.Option(None, help="Cache folder (default: the one the index records; another cache is refused)."),
    device: str = device_option("backbones embed query files"),
    mmap: Optional[bool] = typer.Option(
        None, "--mmap/--no-mmap",
        help="Map the index files into memory and read pages from disk on demand (--mmap), or load them (--no-mmap). Default: map the IVF shards of an index built with --shards when there is no GPU.",
    ),
    server: Optional[str] = typer.Option(
        None, "--server", metavar="URL", envvar="AVFEAT_SERVER",
        help="Ask a running `avfeat serve` at URL (no INDEX, no models loaded here); hits' path is the URL that plays them.",
    ),
    token: Optional[str] = typer.Option(None, "--token", envvar="AVFEAT_TOKEN", help="The --server's token, if it has one."),
) -> None:
    """Cross-modal search: which videos sound like this, which sounds fit this picture."""
    if server:
        from avfeat.index.serve.remote import refuse_local_options, search_queries_remote

        given = {"--thumbs": thumbs, "--mmap": mmap, "--cache": cache, "--heads": heads, "--device": None if device == "auto" else device}
        refuse_local_options([name for name, value in given.items() if value is not None])
        results = search_queries_remote(server, ([str(index_dir)] if index_dir else []) + list(query or []), queries, side=side, k=k,
                                        rerank=rerank, locate=locate, where=where, per_video=per_video, exclude_video=exclude_video, token=token)
    else:
        results = _local_results(index_dir, query, queries, side, k, rerank, locate, where, per_video, exclude_video, thumbs, heads, cache, device, mmap)
    _print_results(results, as_json)


def _local_results(index_dir, query, queries, side, k, rerank, locate, where, per_video, exclude_video, thumbs, heads, cache, device, mmap):
    from avfeat.core.errors import InputError
    from avfeat.index.batch import search_queries

    if index_dir is None:
        raise InputError("give INDEX (an index folder) and a query, or --server URL")
    return search_queries(
        index_dir, query, queries, side=side, k=k, rerank=rerank, locate=locate, where=where, per_video=per_video,
        exclude_video=exclude_video, thumbs=thumbs, heads=heads, cache=cache, device=device, mmap=mmap,
    )


def _print_results(results, as_json: bool) -> None:
    failed = 0
    for result in results:
        _print_result(result, as_json)
        failed += result.error is not None
    if failed:
        from avfeat.cli.extract import EXIT_SOME_FAILED

        typer.echo(f"avfeat: error: {failed} queries failed (each named above); the others were answered", err=True)
        raise typer.Exit(EXIT_SOME_FAILED)


def _sync_line(job, row, as_json: bool) -> str:
    """One row of a many-video sync: JSON, a failure, or offset, confidence and direction."""
    from avfeat.index.sync import direction

    name = f"{row.video_id} ({row.video})" if job.with_id else row.video
    if as_json:
        return json.dumps(row.to_dict(job.with_id))
    if row.error is not None:
        return f"{'-':>8}  {'-':>10}  {'failed':<11}  {name}: {row.error}"
    r = row.result
    offset = f"{'-':>8}" if r.offset is None else f"{r.offset:>+8.3f}"
    return f"{offset}  {r.confidence:>10.2f}  {direction(r.offset):<11}  {name}"


def sync(
    videos: Optional[List[Path]] = typer.Argument(
        None, metavar="VIDEO",
        help="Video files, cached or not, or folders (every media file inside, recursively); one load of the models for all.",
    ),
    heads: Path = typer.Option(..., "--heads", help="Heads checkpoint; the videos are embedded with the backbones its cache used."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Instead of VIDEO: every video of this cache that has tokens, from its tokens (no decoding); the heads' own cache family."),
    max_offset: float = typer.Option(2.0, help="Largest offset searched, seconds either way."),
    as_json: bool = typer.Option(False, "--json", help='Print {"offset": seconds, "confidence": ...}; JSON Lines, one object per video, for several.'),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the table (video, offset, confidence, error) to this .csv, .parquet or .jsonl file."),
    fix: Optional[Path] = typer.Option(None, "--fix", metavar="OUT", help="Write a copy of VIDEO with its audio moved by the estimate, in sync (stream copy: pictures untouched). One VIDEO only; for a corpus see `avfeat audit --fix-dir`."),
    overwrite: bool = overwrite_option("Replace an existing --out or --fix file."),
    plot: Optional[Path] = typer.Option(None, help="Save the score over lags to this PNG (one VIDEO only)."),
    min_confidence: float = typer.Option(
        0.3, "--min-confidence",
        help="With --fix: write the copy only when the confidence (0 to 1) reaches this; below it the audio is left alone and the exit status is 3.",
    ),
    device: str = device_option("backbones run"),
    quiet: bool = quiet_option(),
) -> None:
    """Audio-visual offset of videos; positive = audio late (the sound comes after the picture)."""
    from tqdm import tqdm

    from avfeat.extract.tasks import SILENT_DB
    from avfeat.index.sync import direction
    from avfeat.index.sync_job import sync_videos

    def begin(job) -> None:
        if not as_json:
            typer.echo(f"{'offset':>8}  {'confidence':>10}  {'direction':<11}  video")

    def report(job, row) -> None:
        if not job.single:
            tqdm.write(_sync_line(job, row, as_json))
        elif as_json:
            typer.echo(json.dumps(row.result.to_dict()))
        elif row.result.silent:
            typer.echo(f"silent: no offset (the sound is below {SILENT_DB:g} dBFS), confidence 0.00")
        else:
            typer.echo(f"offset {row.result.offset:+.3f} s ({direction(row.result.offset)}), confidence {row.result.confidence:.2f}")

    done = sync_videos(videos, heads, cache=cache, max_offset=max_offset, out=out, fix=fix, overwrite=overwrite, plot=plot,
                       min_confidence=min_confidence, device=device, quiet=quiet, begin=begin, report=report)
    if done.fixed is not None:
        offset = done.rows[0].result.offset
        typer.echo(f"wrote {done.fixed}: audio moved {abs(offset):.3f} s {'earlier' if offset >= 0 else 'later'}", err=as_json)
    if done.unfixed is not None:
        typer.echo(f"note: {done.unfixed}", err=True)
    failed = done.failed
    if failed:
        typer.echo(f"avfeat: error: {len(failed)} of {len(done.rows)} videos could not be synchronised (first: {failed[0].video}: {failed[0].error})", err=True)
        raise typer.Exit(1)
    if done.unfixed is not None:
        from avfeat.cli.extract import EXIT_SOME_FAILED

        raise typer.Exit(EXIT_SOME_FAILED)  # the estimate stands, the asked-for copy does not


def register(app: typer.Typer) -> None:
    app.command("index")(index)
    app.command()(search)
    app.command()(sync)
