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
    from avfeat.core.values import check_number, parse_size
    from avfeat.core.errors import InputError
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


def _print_candidates(candidates, threshold: float, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([c.to_dict() for c in candidates], indent=2))
        if not candidates:  # stdout stays a JSON list; the reason goes beside it
            typer.echo(f"not found: no indexed video holds this clip (calibrated threshold {threshold:.4f})", err=True)
        return
    if not candidates:
        typer.echo(f"not found: no indexed video holds this clip (best score below the calibrated threshold {threshold:.4f})")
        return
    typer.echo(f"{'rank':>4}  {'score':>7}  {'votes':>5}  {'time':>8}  path")
    for rank, c in enumerate(candidates, 1):
        typer.echo(f"{rank:>4}  {c.score:>7.4f}  {c.votes:>5}  {c.time:>8.2f}  {c.path}")


def read_query_list(path: Path) -> list[str]:
    """The queries of a ``--queries`` file: one a line, blank lines and ``#`` comment lines
    skipped; a relative file path is taken from the list's folder (``VIDEO_ID@START-END`` as is)."""
    from avfeat.core.errors import InputError

    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"--queries {path}: cannot read it ({getattr(error, 'strerror', None) or error})") from None
    queries = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        beside = path.parent / line
        # "@" marks an id query; a file that exists under that name still wins.
        queries.append(str(beside) if not Path(line).is_absolute() and ("@" not in line or beside.is_file()) else line)
    if not queries:
        raise InputError(f"--queries {path} lists no query")
    return queries


def _check_query(query: str) -> None:
    """A query must be a file or look like VIDEO_ID@START-END; checked before anything heavy is
    imported, so a typo fails at once (an id's video is checked once the cache is open)."""
    from avfeat.core.errors import QueryError

    if Path(query).is_file():
        return
    if "@" in query:
        from avfeat.index.query import parse_id_query  # imports torch: only for what may be an id

        if parse_id_query(query) is not None:
            return
    raise QueryError(f"query {query!r} is neither a file nor VIDEO_ID@START-END (e.g. abc123@1:05-1:07)")


def _numbered(path: Path, number: int) -> Path:
    """``hits.png`` → ``hits-2.png``: one contact sheet per query of a batch."""
    return path.with_name(f"{path.stem}-{number}{path.suffix}")


def search(
    index_dir: Path = typer.Argument(..., metavar="INDEX", help="An index folder written by `avfeat index`."),
    query: Optional[List[str]] = typer.Argument(
        None, metavar="QUERY",
        help="Videos, audio files (wav, flac, mp3), images (png, jpg), or VIDEO_ID@START-END from the cache; several are searched with one load.",
    ),
    queries: Optional[Path] = typer.Option(
        None, "--queries", metavar="LIST",
        help="A text file of queries, one a line ('#' starts a comment line; relative paths are from the file's folder); after any QUERY arguments.",
    ),
    side: Optional[str] = typer.Option(None, "--from", help="Query side, audio or visual; the other modality is searched (default: audio, visual for images)."),
    k: int = typer.Option(10, "-k", min=1, help="Hits (or --locate candidates) to return."),
    rerank: int = typer.Option(0, min=0, help="Rescore the top N hits with the heads' exact clip score (max-mean) over their cached tokens."),
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
    device: str = typer.Option("auto", help="Where the backbones embed query files: auto, cpu, cuda, cuda:1, ..."),
    mmap: Optional[bool] = typer.Option(
        None, "--mmap/--no-mmap",
        help="Map the index files into memory and read pages from disk on demand (--mmap), or load them (--no-mmap). Default: map the IVF shards of an index built with --shards when there is no GPU.",
    ),
) -> None:
    """Cross-modal search: which videos sound like this, which sounds fit this picture."""
    from avfeat.core.errors import InputError

    if side not in (None, "audio", "visual"):
        raise InputError(f"--from must be audio or visual (got {side!r})")
    # Every query (and the --thumbs paths) is checked before any model or index loads: a typo
    # in the 50th query of a list should not cost the load, nor the 49 searches before it.
    texts = list(query or []) + (read_query_list(queries) if queries is not None else [])
    if not texts:
        raise InputError("no query: give QUERY arguments or --queries LIST")
    for text in texts:
        _check_query(text)
    batch = len(texts) > 1 or queries is not None  # one block per query; a single QUERY prints as it always did

    from avfeat.core.devices import resolve_device
    from avfeat.core.io import prepare_output_file
    from avfeat.core.errors import QueryError
    from avfeat.index.search import Searcher, parse_where

    conditions = parse_where(where)
    if conditions and locate:  # --locate votes over every window match; it takes no filter
        raise InputError("--where filters search hits; it cannot be used with --locate")
    sheets = [None] * len(texts)
    if thumbs is not None:
        sheets = [_numbered(thumbs, n) for n in range(1, len(texts) + 1)] if batch else [thumbs]
        for sheet in sheets:
            prepare_output_file(sheet, "--thumbs")
    searcher = Searcher(index_dir, heads=heads, cache=cache, device=str(resolve_device(device)), mmap=mmap)
    searcher.matching_rows("audio", conditions)  # an unknown column is refused before the query is embedded
    from avfeat.index.query import parse_id_query

    for text in texts:  # every VIDEO_ID is looked up in the cache before the first search
        parsed = None if Path(text).is_file() else parse_id_query(text)
        if parsed is not None and parsed[0] not in {r.video_id for r in searcher.cache.records(status="ok")}:
            raise QueryError(f"query {text!r}: the cache has no video {parsed[0]!r} with tokens")
    for text, sheet in zip(texts, sheets):
        tokens = searcher.tokens(text)
        if locate:
            from avfeat.index.locate import clip_seconds
            from avfeat.index.search import Hit

            sides = [side] if side else tokens.sides()
            candidates = searcher.locate(tokens, side=side, k=k)
            threshold = searcher.locate_threshold(sides, clip_seconds(tokens))
            if batch and as_json:
                typer.echo(json.dumps({"query": text, "side": "+".join(sides), "threshold": threshold, "candidates": [c.to_dict() for c in candidates]}))
            else:
                if batch:
                    typer.echo(f"{'' if text == texts[0] else chr(10)}== {text} ({'+'.join(sides)}, located) ==")
                _print_candidates(candidates, threshold, as_json)
            # A located candidate as a hit: the span it covers, drawn at its middle.
            seconds = clip_seconds(tokens)
            drawn = [Hit(r, c.score, c.video_id, c.path, c.time, c.time + seconds) for r, c in enumerate(candidates, 1)]
        else:
            query_side = side or tokens.default_side()
            drawn = searcher.search(tokens, side=query_side, k=k, rerank=rerank, where=conditions,
                                    one_per_video=per_video, exclude_video=exclude_video)
            if batch and as_json:
                hits = [hit.to_dict() for hit in drawn]
                typer.echo(json.dumps({"query": text, "side": query_side, "hits": hits}, default=str))
            else:
                if batch:
                    typer.echo(f"{'' if text == texts[0] else chr(10)}== {text} ({query_side} → {'visual' if query_side == 'audio' else 'audio'}) ==")
                _print_hits(drawn, as_json)
        if sheet is not None:
            from avfeat.index.thumbs import contact_sheet

            contact_sheet(drawn, sheet)


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
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out or --fix file."),
    plot: Optional[Path] = typer.Option(None, help="Save the score over lags to this PNG (one VIDEO only)."),
    device: str = typer.Option("auto", help="Where the backbones run: auto, cpu, cuda, cuda:1, ..."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Audio-visual offset of videos; positive = audio late (the sound comes after the picture)."""
    import os

    from avfeat.core.devices import resolve_device
    from avfeat.core.io import prepare_output_file
    from avfeat.core.values import check_number
    from avfeat.core.errors import InputError

    check_number("--max-offset", max_offset)
    videos = list(videos or [])
    if cache is not None and videos:
        raise InputError("give VIDEO arguments or --cache CACHE, not both")
    if cache is None and not videos:
        raise InputError("no video: give VIDEO arguments (files or folders) or --cache CACHE")
    from avfeat.index.sync import list_videos

    paths = list_videos(videos)  # folders expanded (and an empty one refused) before anything loads
    # One VIDEO that names a file (not a folder) keeps the one-video output: a line, or one JSON object.
    single = cache is None and len(videos) == 1 and paths == [videos[0]]
    if not single and plot is not None:
        raise InputError("--plot draws one video's curve; give a single VIDEO")
    if not single and fix is not None:
        raise InputError("--fix repairs one VIDEO; for a corpus, `avfeat audit CACHE --heads HEADS --fix-dir DIR` repairs every video it finds out of sync")
    # Every output is checked before the models load: a refusal costs nothing.
    for path, option in ((out, "--out"), (fix, "--fix"), (plot, "--plot")):
        if path is not None:
            prepare_output_file(path, option)
    if out is not None:
        from avfeat.index.sync import check_table_path

        check_table_path(out)
    if fix is not None:
        if os.path.realpath(fix) == os.path.realpath(videos[0]):
            raise InputError(f"--fix {fix} is the input video itself; write the repaired copy to another file")
        if not videos[0].is_file():
            raise InputError(f"video {videos[0]} does not exist")
    for path, option in ((out, "--out"), (fix, "--fix")):
        if path is not None and path.exists() and not overwrite:
            raise InputError(f"{option} {path} exists; pass --overwrite to replace it")

    from avfeat.index.store import load_heads
    from avfeat.index.sync import direction, plot_curve, remux_shifted, sync_cache, sync_file, sync_files, write_table

    device = str(resolve_device(device))
    if single:
        checkpoint = load_heads(heads)
        result = sync_file(videos[0], checkpoint, max_offset=max_offset, device=device)
        if plot is not None:
            plot_curve(result, plot, title=videos[0].name)
        if as_json:
            typer.echo(json.dumps(result.to_dict()))
        else:
            typer.echo(f"offset {result.offset:+.3f} s ({direction(result.offset)}), confidence {result.confidence:.2f}")
        if out is not None:
            from avfeat.index.sync import SyncRow

            write_table([SyncRow(str(videos[0]), result=result)], out)
        if fix is not None:
            remux_shifted(videos[0], fix, result.offset)
            typer.echo(f"wrote {fix}: audio moved {abs(result.offset):.3f} s {'earlier' if result.offset >= 0 else 'later'}", err=as_json)
        return

    import contextlib

    from tqdm import tqdm

    with_id = cache is not None
    with contextlib.ExitStack() as stack:
        if cache is None:
            checkpoint = load_heads(heads)
            rows, total = sync_files(paths, checkpoint, max_offset=max_offset, device=device), len(paths)
        else:
            from avfeat.data.cache import Cache

            store = stack.enter_context(Cache(cache))
            checkpoint = load_heads(heads)
            checkpoint.check_cache(store)  # tokens of other backbones would give meaningless offsets
            total = len(store.records(status="ok"))
            if not total:
                raise InputError(f"the cache {cache} has no video with tokens")
            rows = sync_cache(store, checkpoint, max_offset=max_offset)
        if not as_json:
            typer.echo(f"{'offset':>8}  {'confidence':>10}  {'direction':<11}  video")
        done = []
        # tqdm.write prints each line above the bar: results stream while it runs.
        for row in tqdm(rows, total=total, unit="video", disable=quiet, dynamic_ncols=True):
            done.append(row)
            name = f"{row.video_id} ({row.video})" if with_id else row.video
            if as_json:
                line = json.dumps(row.to_dict(with_id))
            elif row.error is not None:
                line = f"{'-':>8}  {'-':>10}  {'failed':<11}  {name}: {row.error}"
            else:
                r = row.result
                line = f"{r.offset:>+8.3f}  {r.confidence:>10.2f}  {direction(r.offset):<11}  {name}"
            tqdm.write(line)
    if out is not None:
        write_table(done, out, with_id)
    failed = [row for row in done if row.error is not None]
    if failed:
        typer.echo(f"avfeat: error: {len(failed)} of {len(done)} videos could not be synchronised (first: {failed[0].video}: {failed[0].error})", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("index")(index)
    app.command()(search)
    app.command()(sync)
