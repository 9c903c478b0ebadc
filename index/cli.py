"""`avfeat index` (cache + heads → FAISS indexes), `avfeat search` and `avfeat sync`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def index(
    cache: Path = typer.Argument(..., help="A cache folder written by `avfeat extract`."),
    heads: Path = typer.Option(..., "--heads", help="Heads checkpoint written by `avfeat train-head`."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to write (an existing index needs --overwrite or --update)."),
    window: Optional[float] = typer.Option(None, help="Window length in seconds (default: the heads' window)."),
    hop: Optional[float] = typer.Option(None, help="Seconds between window starts (default: the heads' hop)."),
    factory: Optional[str] = typer.Option(None, help="FAISS factory string, e.g. 'HNSW32,Flat' or 'IVF4096,PQ32' (default: chosen from the collection size)."),
    memory_budget: Optional[str] = typer.Option(None, help="Memory the index may take, e.g. 4GB (default: half the machine's memory); IVF-PQ when raw vectors do not fit."),
    shards: Optional[int] = typer.Option(None, help="Split each modality into N index files over contiguous ranges of windows, trained once; searched together, one GPU per shard where there are several (default 1)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the index in --out (atomically: the old one stays until the new one is complete)."),
    update: bool = typer.Option(False, "--update", help="Add the cache's videos that the index in --out lacks, with its window, hop and trained index (no retraining); same heads, and a cache holding all its videos."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Project every window of the cache through the heads and write per-modality FAISS indexes."""
    from avfeat.data.cache import Cache
    from avfeat.common import check_number, parse_size
    from avfeat.errors import InputError
    from avfeat.index.build import build_index, update_index
    from avfeat.index.store import load_heads

    if update:
        # An update keeps what the index was built with; these options would silently not apply.
        given = [name for name, value in (("--window", window), ("--hop", hop), ("--factory", factory), ("--memory-budget", memory_budget),
                                          ("--shards", shards), ("--overwrite", overwrite or None)) if value is not None]
        if given:
            raise InputError(f"--update keeps the index's window, hop, index type and shards; drop {', '.join(given)} (or rebuild with --overwrite)")
    check_number("--window", window)
    check_number("--hop", hop)
    budget = parse_size(memory_budget) if memory_budget else None
    checkpoint = load_heads(heads)
    with Cache(cache) as store:
        if update:
            done = update_index(store, checkpoint, out, quiet=quiet)
        else:
            meta = build_index(
                store, checkpoint, out, window=window, hop=hop, factory=factory,
                memory_budget=budget, quiet=quiet, shards=1 if shards is None else shards, overwrite=overwrite,
            )
    if update:
        if not done.videos:
            typer.echo(f"nothing to add: {out} already holds every video of {cache} ({done.meta['videos']} videos); left unchanged")
            return
        counts = ", ".join(f"{m} {info['count']}" for m, info in done.meta["modalities"].items())
        typer.echo(f"added {done.videos} videos ({done.windows} windows) to {out}: now {done.meta['videos']} videos, windows {counts}")
        return
    for modality, info in meta["modalities"].items():
        tuned = ", ".join(f"{k}={v}" for k, v in info["params"].items())
        recall = f", recall@10 {info['recall_at_10']:.3f} vs exact" if info["recall_at_10"] is not None else ""
        split = f" in {len(info['shards'])} shards" if "shards" in info else ""
        typer.echo(f"{modality:<7} {info['count']} windows, {info['factory']}{' (' + tuned + ')' if tuned else ''}{recall}{split}")
    typer.echo(f"wrote {out} ({meta['videos']} videos, {meta['window']:g} s windows every {meta['hop']:g} s)")


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


def search(
    index_dir: Path = typer.Argument(..., metavar="INDEX", help="An index folder written by `avfeat index`."),
    query: str = typer.Argument(..., help="A video, an audio file (wav, flac, mp3), an image (png, jpg), or VIDEO_ID@START-END from the cache."),
    side: Optional[str] = typer.Option(None, "--from", help="Query side, audio or visual; the other modality is searched (default: audio, visual for images)."),
    k: int = typer.Option(10, "-k", min=1, help="Hits (or --locate candidates) to return."),
    rerank: int = typer.Option(0, min=0, help="Rescore the top N hits with the heads' exact clip score (max-mean) over their cached tokens."),
    locate: bool = typer.Option(False, "--locate", help="Find the video and time the query clip was cut from."),
    where: Optional[List[str]] = typer.Option(
        None, "--where", metavar="COLUMN=VALUE",
        help="Keep only hits whose column (metadata such as label, or video_id, path) has this value, compared as text; repeat to require several. Applied before the top k are cut.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table (each hit with its metadata object)."),
    thumbs: Optional[Path] = typer.Option(None, help="Save a contact sheet of the hits' frames to this PNG (missing folders are created; not with --locate)."),
    heads: Optional[Path] = typer.Option(None, help="Heads checkpoint (default: the one the index was built with; others are refused)."),
    cache: Optional[Path] = typer.Option(None, help="Cache folder (default: the one the index records; another cache is refused)."),
    device: str = typer.Option("auto", help="Where the backbones embed query files: auto, cpu, cuda, cuda:1, ..."),
    mmap: Optional[bool] = typer.Option(
        None, "--mmap/--no-mmap",
        help="Map the index files into memory and read pages from disk on demand (--mmap), or load them (--no-mmap). Default: map the IVF shards of an index built with --shards when there is no GPU.",
    ),
) -> None:
    """Cross-modal search: which videos sound like this, which sounds fit this picture."""
    from avfeat.common import prepare_output_file, resolve_device
    from avfeat.errors import InputError, QueryError
    from avfeat.index.query import parse_id_query
    from avfeat.index.search import Searcher, parse_where

    if side not in (None, "audio", "visual"):
        raise InputError(f"--from must be audio or visual (got {side!r})")
    conditions = parse_where(where)
    if conditions and locate:  # --locate votes over every window match; it takes no filter
        raise InputError("--where filters search hits; it cannot be used with --locate")
    # The query and the --thumbs path are checked before any model or index loads.
    if parse_id_query(query) is None and not Path(query).is_file():
        raise QueryError(f"query {query!r} is neither a file nor VIDEO_ID@START-END (e.g. abc123@1:05-1:07)")
    if thumbs is not None:
        if locate:  # --locate lists candidates, not hits: it would silently write no sheet
            raise InputError("--thumbs draws search hits; it cannot be used with --locate")
        prepare_output_file(thumbs, "--thumbs")
    searcher = Searcher(index_dir, heads=heads, cache=cache, device=str(resolve_device(device)), mmap=mmap)
    searcher.matching_rows("audio", conditions)  # an unknown column is refused before the query is embedded
    if locate:
        candidates = searcher.locate(query, side=side, k=k)
        if as_json:
            typer.echo(json.dumps([c.to_dict() for c in candidates], indent=2))
        else:
            typer.echo(f"{'votes':>5}  {'time':>8}  path")
            for c in candidates:
                typer.echo(f"{c.votes:>5}  {c.time:>8.2f}  {c.path}")
        return
    hits = searcher.search(query, side=side, k=k, rerank=rerank, where=conditions)
    _print_hits(hits, as_json)
    if thumbs is not None:
        from avfeat.index.thumbs import contact_sheet

        contact_sheet(hits, thumbs)


def sync(
    video: Path = typer.Argument(..., help="A video file, cached or not."),
    heads: Path = typer.Option(..., "--heads", help="Heads checkpoint; the video is embedded with the backbones its cache used."),
    max_offset: float = typer.Option(2.0, help="Largest offset searched, seconds either way."),
    as_json: bool = typer.Option(False, "--json", help='Print {"offset": seconds, "confidence": ...}.'),
    plot: Optional[Path] = typer.Option(None, help="Save the score over lags to this PNG."),
    device: str = typer.Option("auto", help="Where the backbones run: auto, cpu, cuda, cuda:1, ..."),
) -> None:
    """Audio-visual offset of a video; positive = audio late (the sound comes after the picture)."""
    from avfeat.index.store import load_heads
    from avfeat.index.sync import plot_curve, sync_file

    from avfeat.common import check_number, prepare_output_file, resolve_device

    check_number("--max-offset", max_offset)
    device = str(resolve_device(device))
    if plot is not None:
        prepare_output_file(plot, "--plot")
    checkpoint = load_heads(heads)
    result = sync_file(video, checkpoint, max_offset=max_offset, device=device)
    if plot is not None:
        plot_curve(result, plot, title=video.name)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        late = "audio late" if result.offset > 0 else "audio early" if result.offset < 0 else "in sync"
        typer.echo(f"offset {result.offset:+.3f} s ({late}), confidence {result.confidence:.2f}")


def register(app: typer.Typer) -> None:
    app.command("index")(index)
    app.command()(search)
    app.command()(sync)
