"""``VectorSearcher``: an index folder and its cache, searched by vectors, torch-free.

What every searcher shares: FAISS search with ``where`` filters, one hit per video, a video
left out, the search-then-rerank order of ``search`` and the cache opened on first need. How a
query becomes a vector and how its top hits are rescored is a subclass's: ``Searcher``
(``avfeat.index.search``) with torch heads and the backbones, for every kind of query;
``SpanSearcher`` (``avfeat.index.span_search``) in numpy, for cached spans, so that a span
query from the shell does not wait for torch's import.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from avfeat.align.windows import WindowGeometry
from avfeat.core.errors import AvfeatError, CacheError, InputError, QueryError, SearchIndexError
from avfeat.index.hits import MODALITIES, Hit, other
from avfeat.index.query import QueryTokens, cached_query
from avfeat.index.store import TABLE_COLUMNS, IndexFolder

# A filtered search (``where``) asks FAISS for this many times the hits it keeps, then for this
# many times more while too few match, up to the whole collection.
WHERE_GROWTH = 4
# Queries rerank this many top hits unless told (`avfeat search`, serve). Plain audio → visual
# class R@1 was 0.70-1.00 over 5 seeds of the index acceptance run (5 fps), reranked (20) 0.93 or
# more. At 1 fps, where a window holds two frames, the first stage finds less: over
# five trainings on four 80-video corpora (1 and 2 fps, 200 and 600 steps; 30 held-out queries
# each) audio → visual was 0.23-0.67 plain, 0.63-0.90 reranking 20 and 0.83-0.97 reranking 50;
# visual → audio 0.73-0.87, 0.83-0.97 and 0.83-1.00. Reranking costs about linearly in its depth
# (100-250 ms for 50 here, with tiny backbones).
DEFAULT_RERANK = 50
# FAISS GPU indexes return at most this many hits per query.
GPU_MAX_K = 2048

log = logging.getLogger(__name__)


def parse_where(where) -> list[tuple[str, str]]:
    """``--where`` conditions as (column, value) pairs: a mapping, or ``"COLUMN=VALUE"`` strings
    or pairs. Values are compared as text (see ``Searcher.search``)."""
    if where is None:
        return []
    if isinstance(where, Mapping):
        return [(str(k), str(v)) for k, v in where.items()]
    pairs = []
    for item in [where] if isinstance(where, str) else where:
        if isinstance(item, str):
            column, sep, value = item.partition("=")
            if not sep or not column.strip():
                raise InputError(f"--where takes COLUMN=VALUE (e.g. label=dog), not {item!r}")
            item = (column.strip(), value)
        column, value = item
        pairs.append((str(column), str(value)))
    return pairs


def _text_match(column, value: str) -> np.ndarray:
    """Rows of a pyarrow column whose value, written as text, is ``value``: numbers also match by
    value (``1`` and ``1.0``), booleans as true/false in any case, a list when one of its items
    does (``tags=outdoor``); null matches nothing."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return np.array([any(str(item) == value for item in items or ()) for items in column.to_pylist()], bool)
    if pa.types.is_boolean(kind):
        wanted = value.strip().lower()
        if wanted not in ("true", "false"):
            return np.zeros(len(column), bool)
        found = pc.equal(column, pa.scalar(wanted == "true"))
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        try:
            number = float(value)
        except ValueError:
            return np.zeros(len(column), bool)
        found = pc.equal(pc.cast(column, pa.float64()), pa.scalar(number))
    elif pa.types.is_null(kind):
        return np.zeros(len(column), bool)
    else:
        try:
            found = pc.equal(pc.cast(column, pa.string()), pa.scalar(value))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # a type Arrow cannot write as text
            return np.array([item is not None and str(item) == value for item in column.to_pylist()], bool)
    return np.asarray(pc.fill_null(found, False).to_numpy(zero_copy_only=False), dtype=bool)


class VectorSearcher:
    """An index searched by vectors, with the cache it was built from.

    Args:
        index: the folder written by ``avfeat index``.
        cache: a cache folder or ``Cache``; default: the one meta.json names, opened on first
            need (rerank, ``VIDEO_ID@START-END``). Another cache is refused.
        mmap: True maps the FAISS files into memory (pages read from disk on demand) instead
            of loading them, False loads them; None (default) maps the IVF shards of a folder
            built with ``--shards`` when faiss has no GPU (see ``avfeat.index.store``).
    """

    def __init__(self, index: str | os.PathLike, cache=None, mmap: bool | None = None):
        self.folder = IndexFolder(index, mmap=mmap)
        self.folder.check_searchable()
        self.meta = self.folder.meta
        self.aggregation = self.meta["aggregation"]
        self.geometry = WindowGeometry(self.meta["window"], self.meta["geometry"]["audio_rate"], self.meta["geometry"]["fps"])
        self.hop = self.meta["hop"]
        self._cache = None
        if cache is not None:
            self._cache = self._open_cache(cache)

    def _open_cache(self, cache):
        from avfeat.data.cache import Cache

        if isinstance(cache, (str, os.PathLike)):
            if not Path(cache).exists():
                raise CacheError(f"cache {cache} does not exist (the index records it; pass --cache if it moved)")
            cache = Cache(cache)
        from avfeat.index.update import check_search_cache

        check_search_cache(self.folder, cache)  # the index's cache, even after extract --resume added videos
        log.info("cache %s opened for the index %s", cache.layout.root, self.folder.path)
        return cache

    @property
    def cache(self):
        if self._cache is None:
            self._cache = self._open_cache(self.meta["cache"]["path"])
        return self._cache

    # ---- queries ----------------------------------------------------------------------

    def tokens(self, query: str | os.PathLike) -> QueryTokens:
        """``VIDEO_ID@START-END``'s cached tokens (``Searcher`` embeds files too)."""
        found = cached_query(self.cache, os.fspath(query))
        if found is None:
            raise QueryError(f"query {os.fspath(query)!r} is not VIDEO_ID@START-END")
        return found

    def search_vectors(self, vectors, modality: str, k: int = 10, where=None) -> list[list[Hit]]:
        """Search the ``modality`` index with (n, dim) unit vectors; one hit list per row.
        ``where``: keep only hits whose columns match (see ``search``)."""
        if modality not in MODALITIES:
            raise QueryError(f"unknown modality {modality!r} ({', '.join(MODALITIES)})")
        if hasattr(vectors, "detach"):  # a torch tensor, on any device
            vectors = vectors.detach().float().cpu().numpy()
        with np.errstate(over="ignore"):  # a float64 beyond float32 becomes inf, refused just below
            vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(-1, self.meta["dim"]))
        if not np.isfinite(vectors).all():  # NaN would score nothing, and never ranks first
            raise QueryError("query vectors must be finite numbers (as float32: magnitudes below 3.4e38)")
        keep = self.matching_rows(modality, where)
        if keep is None:
            return self._hits(modality, *self._search(vectors, modality, k))
        return [self._filtered(vector[None], modality, k, keep) for vector in vectors]

    def matching_rows(self, modality: str, where) -> np.ndarray | None:
        """A bool per table row: whether it meets every ``where`` condition; None without any.

        Raises:
            InputError: a condition names a column the table does not have (the message lists them).
        """
        conditions = parse_where(where)
        if not conditions:
            return None
        table = self.folder.table(modality)
        keep = np.ones(table.num_rows, bool)
        for column, value in conditions:
            if column not in table.column_names:
                known = ", ".join(table.column_names)
                raise InputError(f"--where {column}=...: the index has no column {column!r}; its columns are {known}")
            keep &= _text_match(table.column(column), value)
        return keep

    def _filtered(self, vector: np.ndarray, modality: str, k: int, keep: np.ndarray) -> list[Hit]:
        """The top ``k`` hits among the rows ``keep`` marks: FAISS is asked for more hits than
        ``k``, more again while fewer than ``k`` of them match, until it has returned every row
        it can (an IVF index: the rows in the lists it probes)."""
        from avfeat.index.faiss_gpu import gpu_count

        want = min(int(k), int(keep.sum()))
        limit = self.folder.count(modality) if gpu_count() == 0 else min(self.folder.count(modality), GPU_MAX_K)
        fetch = max(1, k) * WHERE_GROWTH
        while True:
            scores, ids = self._search(vector, modality, min(fetch, limit))
            found = (ids[0] >= 0) & keep[np.clip(ids[0], 0, None)]
            if found.sum() >= want or fetch >= limit:
                return self._hits(modality, scores[:, found][:, :k], ids[:, found][:, :k])[0]
            fetch *= WHERE_GROWTH

    def _search(self, vectors: np.ndarray, modality: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's (scores, ids) for ``vectors``, k capped to the collection, ids checked."""
        k = max(1, min(int(k), self.folder.count(modality)))
        scores, ids = self.folder.faiss_index(modality).search(vectors, k)
        table = self.folder.table(modality)
        # FAISS labels are the table's rows; -1 is FAISS's "no result" (dropped later). Any other
        # label outside the table means the .faiss file and the table disagree (a replaced or
        # damaged file): refuse, rather than fail on a row that is not there or show a wrong one.
        wrong = ids[(ids < -1) | (ids >= table.num_rows)]
        if wrong.size:
            raise SearchIndexError(
                f"index {self.folder.path} is damaged: its {modality} FAISS index returned id {int(wrong[0])}, "
                f"but its table has rows 0..{table.num_rows - 1}; rebuild it with `avfeat index --overwrite`"
            )
        return scores, ids

    def _hits(self, modality: str, scores: np.ndarray, ids: np.ndarray) -> list[list[Hit]]:
        """One ranked hit list per row of FAISS's (scores, ids) (-1 ids dropped), with the rows'
        metadata. Only the hit rows are read from the table (one take), however large it is."""
        import pyarrow as pa

        table = self.folder.table(modality)
        rows = iter(table.take(pa.array(ids[ids >= 0], pa.int64())).to_pylist())  # row-major, as below
        lists = []
        for row_s, row_i in zip(scores, ids):
            hits = []
            for score, i in zip(row_s, row_i):
                if i < 0:
                    continue
                row = next(rows)
                metadata = {name: value for name, value in row.items() if name not in TABLE_COLUMNS}
                hits.append(Hit(len(hits) + 1, float(score), row["video_id"], row["path"], float(row["start"]), float(row["end"]), metadata))
            lists.append(hits)
        return lists

    def best_hits(self, vector, modality: str, k: int = 10, where=None, one_per_video: bool = False,
                  exclude_video: str | None = None) -> list[Hit]:
        """The top ``k`` hits of one vector (see ``search_vectors``), with ``one_per_video`` only
        each video's best window and without ``exclude_video``'s windows (e.g. the query's own):
        FAISS is asked for more hits until ``k`` are left or none remain."""
        if not one_per_video and exclude_video is None:
            return self.search_vectors(vector, modality, k=k, where=where)[0]
        for fetch in self.fetch_sizes(modality, k):
            kept = keep_best(self.search_vectors(vector, modality, k=fetch, where=where)[0], k, one_per_video, exclude_video)
            if len(kept) >= k:
                break
        return kept

    def fetch_sizes(self, modality: str, k: int):
        """How many hits ``best_hits`` asks FAISS for, round after round: ``k`` times
        ``WHERE_GROWTH``, growing, up to every row it can return."""
        from avfeat.index.faiss_gpu import gpu_count

        count = self.folder.count(modality)
        limit = count if gpu_count() == 0 else min(count, GPU_MAX_K)
        fetch = max(1, k) * WHERE_GROWTH
        while fetch < limit:
            yield fetch
            fetch *= WHERE_GROWTH
        yield limit

    def default_rerank(self) -> int:
        """How many top hits a query (of either side) reranks when not told: ``DEFAULT_RERANK``
        when the cache is readable (the plain first stage compares pooled vectors, mostly
        background, which max-mean heads are not trained to match), else 0."""
        try:
            self.cache
        except AvfeatError:  # no cache: the plain hits stand
            return 0
        return DEFAULT_RERANK

    def search(self, query, side: str | None = None, k: int = 10, rerank: int | None = 0, where=None,
               one_per_video: bool = False, exclude_video: str | None = None) -> list[Hit]:
        """Cross-modal search: the query's ``side`` (default: audio if it has sound, else visual)
        against the other modality's index; ``rerank`` rescored top hits (see ``rerank``; None:
        ``default_rerank``).

        An audio query (and any query of heads other than max-mean) searches with the normalised
        mean of its window vectors. A visual query of max-mean heads searches with the
        normalised mean of its salient patches (``avfeat.index.vectors.salient_patches``): its
        mean patch is mostly background, which says little about what sounds.

        ``where``: conditions on the table's columns (its metadata, or video_id, path, ...), a
        mapping or ``"COLUMN=VALUE"`` strings, all of which a hit must meet. Values are compared
        as text (numbers also by value, booleans as true/false). They apply before the top
        ``k`` (and the ``rerank`` candidates) are cut, so k matching hits come back when the
        index holds them. ``one_per_video`` and ``exclude_video``: see ``best_hits``.
        """
        tokens = query if isinstance(query, QueryTokens) else self.tokens(query)
        side = side or tokens.default_side()
        vector = self._query_vector(tokens, side)
        if rerank is None:
            rerank = self.default_rerank()
        hits = self.best_hits(vector, other(side), max(k, rerank), where, one_per_video, exclude_video)
        if rerank:
            hits = self.rerank(tokens, side, hits, rerank)
        return hits[:k]

    def rerank(self, tokens: QueryTokens, side: str, hits: list[Hit], n: int) -> list[Hit]:
        """Rescore the top ``n`` hits with the heads' own clip score (max-mean for max-mean heads)
        between the query's projected tokens and each hit window's cached tokens, and sort them
        by it (equal scores by video and start); hits after the first ``n`` keep their order behind them. A visual query of
        max-mean heads takes part through its salient patches only (as one frame)."""
        head, tail = hits[:n], hits[n:]
        # Equal scores (windows showing the same frames) in the order of their video and time,
        # not of their first-stage scores: those differ in the last bits from one searcher's
        # arithmetic to another's (torch, numpy), and the order should not.
        scored = sorted(zip(self._clip_scores(tokens, side, head), head), key=lambda pair: (-pair[0], pair[1].video_id, pair[1].start))
        ordered = [replace(h, rank=r + 1, score=float(s)) for r, (s, h) in enumerate(scored)]
        return ordered + [replace(h, rank=len(ordered) + r + 1) for r, h in enumerate(tail)]

    def _query_vector(self, tokens: QueryTokens, side: str):
        """(1, dim): what ``search`` searches the other modality with."""
        raise NotImplementedError

    def _clip_scores(self, tokens: QueryTokens, side: str, hits: list[Hit]) -> list[float]:
        """The clip score of the query's ``side`` with each hit's window, as ``rerank`` sorts by."""
        raise NotImplementedError


def keep_best(hits: list[Hit], k: int, one_per_video: bool, exclude_video: str | None) -> list[Hit]:
    """The first ``k`` of ranked ``hits`` without ``exclude_video``'s windows and, with
    ``one_per_video``, only each video's best one; ranks renumbered."""
    kept, seen = [], set()
    for hit in hits:
        if hit.video_id == exclude_video or (one_per_video and hit.video_id in seen):
            continue
        seen.add(hit.video_id)
        kept.append(replace(hit, rank=len(kept) + 1))
    return kept[:k]

