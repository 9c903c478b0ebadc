"""`avfeat search`: one or many queries against an index, with one load of it and the models.

Every query (and every ``--thumbs`` path) is checked before any model or index loads: a typo in
the 50th query of a list should not cost the load, nor the 49 searches before it. Results come
one query at a time (``search_queries`` is a generator), each query's contact sheet drawn once
its result has been taken.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from avfeat.core.errors import AvfeatError, CacheError, InputError, QueryError


@dataclass
class QueryResult:
    """One query's answer. ``side``: the side searched from ("audio" or "visual"; for
    ``locate`` the sides matched, joined by "+"). ``hits``: the hits (for ``locate``, each
    candidate as the span it covers). ``candidates`` and ``threshold``: ``locate`` only.
    ``batch``: one of several queries (or of a ``--queries`` list); ``first``: the query is the
    batch's first one (a repeat of it counts as first too). ``error``: a batch's query that
    failed (a file that cannot be decoded...), with no hits."""

    text: str
    side: str
    hits: list
    batch: bool = False
    first: bool = True
    candidates: list | None = None
    threshold: float | None = None
    error: str | None = None  # in a batch: why this query failed (the others go on)

    @property
    def located(self) -> bool:
        return self.candidates is not None


def read_query_list(path: Path) -> list[str]:
    """The queries of a ``--queries`` file: one a line, blank lines and ``#`` comment lines
    skipped; a relative file path is taken from the list's folder (``VIDEO_ID@START-END`` as is)."""
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


def check_query(query: str) -> None:
    """A query must be a file or look like VIDEO_ID@START-END; checked before anything heavy is
    imported, so a typo fails at once (an id's video is checked once the cache is open)."""
    if Path(query).is_file():
        return
    if "@" in query:
        from avfeat.index.query import parse_id_query

        if parse_id_query(query) is not None:
            return
    raise QueryError(f"query {query!r} is neither a file nor VIDEO_ID@START-END (e.g. abc123@1:05-1:07)")


def numbered(path: Path, number: int) -> Path:
    """``hits.png`` → ``hits-2.png``: one contact sheet per query of a batch."""
    return path.with_name(f"{path.stem}-{number}{path.suffix}")


def _checked_queries(query: list[str] | None, queries: Path | None, side: str | None) -> tuple[list[str], bool]:
    """(every query, whether they are a batch), each checked."""
    if side not in (None, "audio", "visual"):
        raise InputError(f"--from must be audio or visual (got {side!r})")
    texts = list(query or []) + (read_query_list(queries) if queries is not None else [])
    if not texts:
        raise InputError("no query: give QUERY arguments or --queries LIST")
    for text in texts:
        check_query(text)
    return texts, len(texts) > 1 or queries is not None  # one block per query; a single QUERY prints as it always did


def _sheets(thumbs: Path | None, count: int, batch: bool) -> list[Path | None]:
    """The contact sheet of each query (None: none), each path checked."""
    from avfeat.core.io import IMAGE_SUFFIXES, prepare_output_file

    if thumbs is None:
        return [None] * count
    sheets = [numbered(thumbs, n) for n in range(1, count + 1)] if batch else [thumbs]
    for sheet in sheets:
        prepare_output_file(sheet, "--thumbs", IMAGE_SUFFIXES, "a picture; no suffix: PNG", bare=True)
    return sheets


def _answer(searcher, text: str, side: str | None, k: int, rerank: int | None, locate: bool, conditions, per_video: bool,
            exclude_video: str | None) -> QueryResult:
    tokens = searcher.tokens(text)
    if not locate:
        query_side = side or tokens.default_side()
        hits = searcher.search(tokens, side=query_side, k=k, rerank=rerank, where=conditions, one_per_video=per_video, exclude_video=exclude_video)
        return QueryResult(text, query_side, hits)
    from avfeat.index.locate import clip_seconds
    from avfeat.index.hits import Hit

    sides = [side] if side else tokens.sides()
    candidates = searcher.locate(tokens, side=side, k=k)
    threshold = searcher.locate_threshold(sides, clip_seconds(tokens))
    # A located candidate as a hit: the span it covers, drawn at its middle.
    seconds = clip_seconds(tokens)
    drawn = [Hit(r, c.score, c.video_id, c.path, c.time, c.time + seconds) for r, c in enumerate(candidates, 1)]
    return QueryResult(text, "+".join(sides), drawn, candidates=candidates, threshold=threshold)


def search_queries(
    index_dir: str | os.PathLike,
    query: list[str] | None = None,
    queries: Path | None = None,
    side: str | None = None,
    k: int = 10,
    rerank: int | None = None,
    locate: bool = False,
    where: list[str] | None = None,
    per_video: bool = False,
    exclude_video: str | None = None,
    thumbs: Path | None = None,
    heads: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    device: str = "auto",
    mmap: bool | None = None,
) -> Iterator[QueryResult]:
    """Search (or with ``locate``, locate) each of ``query`` then the queries listed in the file
    ``queries`` in the index folder ``index_dir``; yields each query's ``QueryResult`` in turn.
    ``rerank`` None: the searcher's default (``VectorSearcher.default_rerank``).
    With ``thumbs``, a contact sheet of each query's hits is drawn there (``NAME-1.png``, ... for
    a batch) once its result has been taken. In a batch, a query that fails yields a result
    with its ``error`` and the others go on."""
    texts, batch = _checked_queries(query, queries, side)

    from avfeat.index.query import parse_id_query
    from avfeat.index.vector_search import parse_where

    conditions = parse_where(where)
    if conditions and locate:  # --locate votes over every window match; it takes no filter
        raise InputError("--where filters search hits; it cannot be used with --locate")
    sheets = _sheets(thumbs, len(texts), batch)
    # Each query read once: a file's path, or a cached span (video, start, end); None for a file.
    spans = [None if Path(text).is_file() else parse_id_query(text) for text in texts]
    spans_only = all(span is not None for span in spans)
    if spans_only and not locate and device in ("auto", "cpu"):
        # Cached spans need no backbone: heads in numpy answer before torch would have imported.
        from avfeat.index.span_search import SpanSearcher

        searcher = SpanSearcher(index_dir, heads=heads, cache=cache, mmap=mmap)
    else:
        from avfeat.core.devices import resolve_device
        from avfeat.index.search import Searcher

        searcher = Searcher(index_dir, heads=heads, cache=cache, device=str(resolve_device(device)), mmap=mmap)
    searcher.matching_rows("audio", conditions)  # an unknown column is refused before the query is embedded
    for text, span in zip(texts, spans):  # every video (an id, or its file's path, name or stem) is looked up before the first search
        if span is not None:
            try:
                searcher.cache.ok_record(searcher.cache.resolve(span[0]))
            except CacheError as error:
                raise QueryError(f"query {text!r}: {error}") from None
    if exclude_video is not None:
        exclude_video = searcher.cache.resolve(exclude_video)
    for text, sheet in zip(texts, sheets):
        try:
            result = _answer(searcher, text, side, k, rerank, locate, conditions, per_video, exclude_video)
        except AvfeatError as error:
            if not batch:
                raise
            # One unreadable file of a list should not cost the answers to the others.
            result = QueryResult(text, side or "", [], error=str(error))
        result.batch, result.first = batch, text == texts[0]
        yield result
        if sheet is not None and result.error is None:
            from avfeat.index.thumbs import contact_sheet

            contact_sheet(result.hits, sheet)
