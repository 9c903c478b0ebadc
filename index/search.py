"""``Searcher``: open an index and search it by vectors, files, cached ids; rerank; locate.

    from avfeat.index import Searcher

    searcher = Searcher("index/")                       # heads and cache from meta.json
    hits = searcher.search("dog.wav", k=5)              # audio → the visual index
    hits = searcher.search("frame.png", rerank=50)      # image → the audio index, max-mean rerank
    hits = searcher.search("video_00003-1a2b@1.0-3.0")  # cached tokens as the query
    hits = searcher.search_vectors(vectors, "visual")   # (n, dim) unit vectors → one list per row
    hits = searcher.search("dog.wav", where={"split": "test"})  # only hits whose metadata match
    vector = searcher.embed("dog.wav")                  # the (1, dim) unit vector search uses
    where = searcher.locate("clip.mp4")                 # the video and time a clip was cut from
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from avfeat.align.windows import WindowGeometry
from avfeat.data.configs import TrainedOn
from avfeat.core.errors import AvfeatError, CacheError, InputError, QueryError, SearchIndexError
from avfeat.index.calibration import store_thresholds, stored_thresholds
from avfeat.index.hits import Hit
from avfeat.index.locate import Candidate, clip_seconds, refine, vote
from avfeat.index.query import Backbones, QueryTokens, cached_query, mean_vector, window_vectors
from avfeat.index.store import TABLE_COLUMNS, IndexFolder, load_heads
from avfeat.index.vectors import AUDIO, MODALITIES, VISUAL, other, project_audio, project_visual, salient_patches

# Matches per query window that vote in ``locate``.
LOCATE_MATCHES = 10
# Voted candidates that ``locate`` re-times and re-ranks by exact token matching (at least; k
# asks for more). Voting is asked for LOCATE_SPARE times as many: several voted bins of one
# placement merge in refinement, and k distinct placements should remain.
LOCATE_REFINE = 5
LOCATE_SPARE = 3
# "Not found" calibration: clips of up to this many indexed videos are located among the other
# videos (their own left out); the threshold is the lowest best score such a clip gets. A
# re-encoded copy can score below clips of other videos of its own kind (on the acceptance
# corpus copies scored 0.65-0.99, other videos' clips 0.57-0.82), so no threshold between those
# two tells a copy from a look-alike. What it tells is media less like the corpus than any of
# its videos is like another: a 1 kHz tone scored 0.01 there (0.29 against 0.33 on the tiny
# test index).
LOCATE_NULL_VIDEOS = 8
# A filtered search (``where``) asks FAISS for this many times the hits it keeps, then for this
# many times more while too few match, up to the whole collection.
WHERE_GROWTH = 4
# Audio queries rerank this many top hits unless told (`avfeat search`, serve): plain audio →
# visual class R@1 0.70-1.00 over 5 seeds of the index acceptance run, reranked 0.93 or more.
AUDIO_RERANK = 20
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


class Searcher:
    """An index with the heads and backbones needed to embed queries.

    Args:
        index: the folder written by ``avfeat index``.
        heads: a checkpoint folder or a loaded checkpoint; default: the one meta.json names.
            Heads other than the index was built with are refused (IndexMismatchError).
        cache: a cache folder or ``Cache``; default: the one meta.json names, opened on first
            need (rerank, ``VIDEO_ID@START-END``). Another cache is refused.
        device: where backbones embed query files.
        mmap: True maps the FAISS files into memory (pages read from disk on demand) instead
            of loading them, False loads them; None (default) maps the IVF shards of a folder
            built with ``--shards`` when faiss has no GPU (see ``avfeat.index.store``).
    """

    def __init__(self, index: str | os.PathLike, heads=None, cache=None, device: str = "cpu", mmap: bool | None = None):
        self.folder = IndexFolder(index, mmap=mmap)
        self.folder.check_searchable()
        self.meta = self.folder.meta
        if heads is None or isinstance(heads, (str, os.PathLike)):
            heads = load_heads(heads or self.meta["heads"]["path"])
        self.folder.check_heads(heads)
        self.checkpoint = heads
        self.heads = heads.heads.eval()
        self.aggregation = self.meta["aggregation"]
        self.geometry = WindowGeometry(self.meta["window"], self.meta["geometry"]["audio_rate"], self.meta["geometry"]["fps"])
        self.hop = self.meta["hop"]
        self._cache = None
        self._thresholds: dict[tuple, float] = {}  # locate's calibrated thresholds (see locate_threshold)
        if cache is not None:
            self._cache = self._open_cache(cache)
        self.backbones = Backbones(TrainedOn.from_dict(self.meta["cache"]), device=device)

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
        """A file's tokens (embedded with the cache's backbones) or ``VIDEO_ID@START-END``'s cached tokens."""
        text = os.fspath(query)
        if not Path(text).exists() and "@" in text:
            found = cached_query(self.cache, text)
            if found is not None:
                return found
        return self.backbones.encode(text)

    def search_vectors(self, vectors, modality: str, k: int = 10, where=None) -> list[list[Hit]]:
        """Search the ``modality`` index with (n, dim) unit vectors; one hit list per row.
        ``where``: keep only hits whose columns match (see ``search``)."""
        if modality not in MODALITIES:
            raise QueryError(f"unknown modality {modality!r} ({', '.join(MODALITIES)})")
        vectors = np.ascontiguousarray(torch.as_tensor(vectors).float().numpy().reshape(-1, self.meta["dim"]))
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

    def embed(self, query, side: str | None = None, windows: bool = False) -> np.ndarray:
        """The unit vector(s) of a query (a file, ``VIDEO_ID@START-END`` or ``QueryTokens``) on
        its ``side`` (default as in ``search``: audio when it has sound), float32.

        Default: the (1, dim) vector ``search`` searches the other modality's index with.
        ``windows=True``: one vector per window of the query, (n, dim), as ``locate`` matches
        them against the same modality. Either can go to ``search_vectors``.
        """
        tokens = query if isinstance(query, QueryTokens) else self.tokens(query)
        side = side or tokens.default_side()
        if windows:
            vectors = window_vectors(tokens, side, self.heads, self.geometry, None, self.aggregation)[1]
        else:
            vectors = self._query_vector(tokens, side)
        return vectors.float().numpy().astype(np.float32, copy=False)

    def _query_vector(self, tokens: QueryTokens, side: str) -> torch.Tensor:
        """(1, dim): what ``search`` searches with (see ``search``)."""
        if side not in tokens.sides():
            raise QueryError(f"query {tokens.name} has no {side} to search with")
        if side == VISUAL and self.aggregation == "max-mean":
            return F.normalize(salient_patches(self.heads, tokens.visual).mean(dim=0, keepdim=True), dim=-1)
        _, vectors = window_vectors(tokens, side, self.heads, self.geometry, self.hop, self.aggregation)
        return mean_vector(vectors)

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

    def default_rerank(self, side: str) -> int:
        """How many top hits a query of ``side`` reranks when not told: ``AUDIO_RERANK`` for
        sound (its plain first stage compares a mean-pooled sound with mean-pooled pictures,
        mostly background) when the cache is readable, else 0."""
        if side != AUDIO:
            return 0
        try:
            self.cache
        except AvfeatError:  # no cache: the plain hits stand
            return 0
        return AUDIO_RERANK

    def search(self, query, side: str | None = None, k: int = 10, rerank: int | None = 0, where=None,
               one_per_video: bool = False, exclude_video: str | None = None) -> list[Hit]:
        """Cross-modal search: the query's ``side`` (default: audio if it has sound, else visual)
        against the other modality's index; ``rerank`` rescored top hits (see ``rerank``; None:
        ``default_rerank``).

        An audio query (and any query of heads other than max-mean) searches with the normalised
        mean of its window vectors. A visual query of max-mean heads searches with the
        normalised mean of its salient patches (``salient_patches``): its mean patch is mostly
        background, which says little about what sounds.

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
            rerank = self.default_rerank(side)
        hits = self.best_hits(vector, other(side), max(k, rerank), where, one_per_video, exclude_video)
        if rerank:
            hits = self.rerank(tokens, side, hits, rerank)
        return hits[:k]

    @torch.no_grad()
    def rerank(self, tokens: QueryTokens, side: str, hits: list[Hit], n: int) -> list[Hit]:
        """Rescore the top ``n`` hits with the heads' own clip score (max-mean for max-mean heads)
        between the query's projected tokens and each hit window's cached tokens, and sort them
        by it; hits after the first ``n`` keep their order behind them. A visual query of
        max-mean heads takes part through its salient patches only (as one frame)."""
        from avfeat.align.scores import pairwise_scores

        head, tail = hits[:n], hits[n:]
        if side == AUDIO:
            query = project_audio(self.heads, tokens.audio)[None]
        elif self.aggregation == "max-mean":
            # The query's salient patches as one frame (CLS slot unused by max-mean).
            found = salient_patches(self.heads, tokens.visual)
            query = torch.cat([torch.zeros_like(found[:1]), found])[None, None]
        else:
            query = project_visual(self.heads, tokens.visual)[None]
        scored = []
        for hit in head:
            if side == AUDIO:
                visual = project_visual(self.heads, self.cache.visual_tokens(hit.video_id, hit.start, hit.end))[None]
                score = pairwise_scores(query, visual, self.aggregation)[0, 0]
            else:
                audio = project_audio(self.heads, self.cache.audio_tokens(hit.video_id, hit.start, hit.end))[None]
                score = pairwise_scores(audio, query, self.aggregation)[0, 0]
            scored.append((float(score), hit))
        scored.sort(key=lambda pair: -pair[0])
        ordered = [replace(h, rank=r + 1, score=s) for r, (s, h) in enumerate(scored)]
        return ordered + [replace(h, rank=len(ordered) + r + 1) for r, h in enumerate(tail)]

    def locate(self, clip, side: str | None = None, k: int = 5) -> list[Candidate]:
        """The videos and times a clip was cut from, best first (see ``avfeat.index.locate``);
        an empty list when no indexed video holds it ("not found").

        Each side of the clip (or only ``side``) is matched against the same modality of the
        index: a copy of a clip shares its pictures and its sound with its source. Voted
        candidates are then re-timed, re-ranked and scored on the cache's backbone tokens
        (``avfeat.index.locate.refine``), so the cache must be at hand. Up to ``k`` candidates
        come back, each a distinct placement (another video, or a span of the same video that
        does not overlap a better one), times never before 0. When the best score is below
        ``locate_threshold`` the clip is not found and nothing comes back.
        """
        tokens = clip if isinstance(clip, QueryTokens) else self.tokens(clip)
        sides = [side] if side else tokens.sides()
        found = self._locate(tokens, sides, k)
        if not found or found[0].score < self.locate_threshold(sides, clip_seconds(tokens)):
            return []
        return found

    def _locate(self, tokens: QueryTokens, sides: list[str], k: int, leave_out: str | None = None) -> list[Candidate]:
        """Vote and refine, without the "not found" check; ``leave_out``: a video id not voted for.

        When refinement leaves fewer than ``k`` distinct placements (a window's top matches
        crowd into a few videos), each window votes again with 4× more matches, up to the
        whole collection, so ``k`` come back whenever the index holds that many."""
        count = min(self.folder.count(m) for m in sides)
        fetch = LOCATE_MATCHES
        while True:
            matches = []
            for modality in sides:
                windows, vectors = window_vectors(tokens, modality, self.heads, self.geometry, None, self.aggregation)
                for window, hits in zip(windows, self.search_vectors(vectors, modality, k=fetch + (leave_out is not None))):
                    matches.extend((hit.video_id, hit.path, hit.start - window.start) for hit in hits if hit.video_id != leave_out)
            voted = vote(matches, self.geometry.fps, k=max(k, LOCATE_REFINE) * LOCATE_SPARE)
            refined = refine(tokens, voted, self.cache, reach=self.geometry.seconds, k=len(voted), sides=sides)
            if len(refined) >= k or fetch >= count:
                return refined[:k]
            fetch *= 4

    def locate_threshold(self, sides, seconds: float) -> float:
        """The score a located clip must reach, calibrated on the index itself.

        Clips of ``seconds`` (rounded up to 0.5 s, at most the video) are cut from the cached
        tokens of up to ``LOCATE_NULL_VIDEOS`` indexed videos and located with their own video
        left out: the best score each gets is what a clip whose source is not indexed scores
        (same sides, same length, same search). The threshold is the lowest of those: media
        less like the corpus than any indexed video is like another is not found.
        Computed once per (sides, length) and kept, in the index folder too (``calibration``). 0 (everything found) when the index holds
        fewer than 2 videos.
        """
        from avfeat.index.query import cached_query

        length = max(0.5, float(np.ceil(seconds * 2) / 2))
        key = (tuple(sorted(sides)), length)
        if key not in self._thresholds:
            self._thresholds.update(stored_thresholds(self.folder.path, self.meta))
        if key not in self._thresholds:
            records = self.cache.records(status="ok")
            indexed = set(self.folder.table(sorted(sides)[0]).column("video_id").unique().to_pylist())
            records = [r for r in records if r.video_id in indexed]
            nulls = []
            if len(records) >= 2:
                picks = np.unique(np.linspace(0, len(records) - 1, min(LOCATE_NULL_VIDEOS, len(records))).round().astype(int))
                for i in picks:
                    record = records[i]
                    start = max(0.0, (record.end_time - length) / 2)  # the video's middle
                    end = min(record.end_time, start + length)
                    tokens = cached_query(self.cache, f"{record.video_id}@{start:.3f}-{end:.3f}")
                    if not all(s in tokens.sides() for s in sides):
                        continue
                    found = self._locate(tokens, list(sides), 1, leave_out=record.video_id)
                    if found:
                        nulls.append(found[0].score)
            self._thresholds[key] = min(nulls) if nulls else 0.0
            store_thresholds(self.folder.path, self.meta, self._thresholds)
        return self._thresholds[key]


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
