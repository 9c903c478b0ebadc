"""``Searcher``: open an index and search it by vectors, files, cached ids; rerank; locate.

    from avfeat.index import Searcher

    searcher = Searcher("index/")                       # heads and cache from meta.json
    hits = searcher.search("dog.wav", k=5)              # audio → the visual index
    hits = searcher.search("frame.png", rerank=50)      # image → the audio index, max-mean rerank
    hits = searcher.search("video_00003-1a2b@1.0-3.0")  # cached tokens as the query
    hits = searcher.search_vectors(vectors, "visual")   # (n, dim) unit vectors → one list per row
    where = searcher.locate("clip.mp4")                 # the video and time a clip was cut from
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from avfeat.align.windows import WindowGeometry
from avfeat.errors import CacheError, QueryError, SearchIndexError
from avfeat.index.locate import Candidate, refine, vote
from avfeat.index.query import Backbones, QueryTokens, cached_query, mean_vector, window_vectors
from avfeat.index.store import IndexFolder, load_heads
from avfeat.index.vectors import AUDIO, MODALITIES, VISUAL, other, project_audio, project_visual, salient_patches

# Matches per query window that vote in ``locate``.
LOCATE_MATCHES = 10
# Voted candidates that ``locate`` re-times and re-ranks by exact token matching.
LOCATE_REFINE = 5


@dataclass
class Hit:
    rank: int
    score: float
    video_id: str
    path: str
    start: float
    end: float

    def to_dict(self) -> dict:
        return asdict(self)


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
        if cache is not None:
            self._cache = self._open_cache(cache)
        self.backbones = Backbones(self.meta["cache"], device=device)

    def _open_cache(self, cache):
        from avfeat.data.cache import Cache

        if isinstance(cache, (str, os.PathLike)):
            if not Path(cache).exists():
                raise CacheError(f"cache {cache} does not exist (the index records it; pass --cache if it moved)")
            cache = Cache(cache)
        self.folder.check_cache(cache)
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

    def search_vectors(self, vectors, modality: str, k: int = 10) -> list[list[Hit]]:
        """Search the ``modality`` index with (n, dim) unit vectors; one hit list per row."""
        if modality not in MODALITIES:
            raise QueryError(f"unknown modality {modality!r} ({', '.join(MODALITIES)})")
        vectors = np.ascontiguousarray(torch.as_tensor(vectors).float().numpy().reshape(-1, self.meta["dim"]))
        k = max(1, min(int(k), self.folder.count(modality)))
        scores, ids = self.folder.faiss_index(modality).search(vectors, k)
        table = self.folder.table(modality)
        # FAISS labels are the table's rows; -1 is FAISS's "no result" (dropped below). Any other
        # label outside the table means the .faiss file and the table disagree (a replaced or
        # damaged file): refuse, rather than fail on a row that is not there or show a wrong one.
        wrong = ids[(ids < -1) | (ids >= table.num_rows)]
        if wrong.size:
            raise SearchIndexError(
                f"index {self.folder.path} is damaged: its {modality} FAISS index returned id {int(wrong[0])}, "
                f"but its table has rows 0..{table.num_rows - 1}; rebuild it with `avfeat index --overwrite`"
            )
        video, path = table.column("video_id").to_pylist(), table.column("path").to_pylist()
        start, end = table.column("start").to_numpy(), table.column("end").to_numpy()
        return [
            [Hit(r + 1, float(s), video[i], path[i], float(start[i]), float(end[i])) for r, (s, i) in enumerate(zip(row_s, row_i)) if i >= 0]
            for row_s, row_i in zip(scores, ids)
        ]

    def search(self, query, side: str | None = None, k: int = 10, rerank: int = 0) -> list[Hit]:
        """Cross-modal search: the query's ``side`` (default: audio if it has sound, else visual)
        against the other modality's index; ``rerank`` rescored top hits (see ``rerank``).

        An audio query (and any query of heads other than max-mean) searches with the normalised
        mean of its window vectors. A visual query of max-mean heads searches with the
        normalised mean of its salient patches (``salient_patches``): its mean patch is mostly
        background, which says little about what sounds.
        """
        tokens = query if isinstance(query, QueryTokens) else self.tokens(query)
        side = side or tokens.default_side()
        if side not in tokens.sides():
            raise QueryError(f"query {tokens.name} has no {side} to search with")
        if side == VISUAL and self.aggregation == "max-mean":
            vector = F.normalize(salient_patches(self.heads, tokens.visual).mean(dim=0, keepdim=True), dim=-1)
        else:
            _, vectors = window_vectors(tokens, side, self.heads, self.geometry, self.hop, self.aggregation)
            vector = mean_vector(vectors)
        hits = self.search_vectors(vector, other(side), k=max(k, rerank))[0]
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
        ordered = [Hit(r + 1, s, h.video_id, h.path, h.start, h.end) for r, (s, h) in enumerate(scored)]
        return ordered + [Hit(len(ordered) + r + 1, h.score, h.video_id, h.path, h.start, h.end) for r, h in enumerate(tail)]

    def locate(self, clip, side: str | None = None, k: int = 5) -> list[Candidate]:
        """The videos and times a clip was cut from, best first (see ``avfeat.index.locate``).

        Each side of the clip (or only ``side``) is matched against the same modality of the
        index: a copy of a clip shares its pictures and its sound with its source. The best
        ``LOCATE_REFINE`` voted candidates are then re-timed and re-ranked on the cache's
        backbone tokens (``avfeat.index.locate.refine``), so the cache must be at hand.
        """
        tokens = clip if isinstance(clip, QueryTokens) else self.tokens(clip)
        matches = []
        for modality in [side] if side else tokens.sides():
            windows, vectors = window_vectors(tokens, modality, self.heads, self.geometry, None, self.aggregation)
            for window, hits in zip(windows, self.search_vectors(vectors, modality, k=LOCATE_MATCHES)):
                matches.extend((hit.video_id, hit.path, hit.start - window.start) for hit in hits)
        voted = vote(matches, self.geometry.fps, k=max(k, LOCATE_REFINE))
        refined = refine(tokens, voted[:LOCATE_REFINE], self.cache, reach=self.geometry.seconds)
        return (refined + voted[LOCATE_REFINE:])[:k]
