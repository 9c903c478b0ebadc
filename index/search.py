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

import os
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from avfeat.core.errors import QueryError
from avfeat.data.configs import TrainedOn
from avfeat.index.calibration import store_thresholds, stored_thresholds
from avfeat.index.hits import AUDIO, VISUAL, Hit
from avfeat.index.locate import Candidate, clip_seconds, refine, vote
from avfeat.index.query import Backbones, QueryTokens, cached_query
from avfeat.index.store import load_heads
from avfeat.index.vector_search import VectorSearcher
from avfeat.index.vectors import mean_vector, project_audio, project_visual, salient_patches, window_vectors

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


class Searcher(VectorSearcher):
    """An index with the heads and backbones needed to embed queries (``VectorSearcher`` with torch).

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
        super().__init__(index, cache=cache, mmap=mmap)
        if heads is None or isinstance(heads, (str, os.PathLike)):
            heads = load_heads(heads or self.meta["heads"]["path"])
        self.folder.check_heads(heads)
        self.checkpoint = heads
        self.heads = heads.heads.eval()
        self._thresholds: dict[tuple, float] = {}  # locate's calibrated thresholds (see locate_threshold)
        self.backbones = Backbones(TrainedOn.from_dict(self.meta["cache"]), device=device)

    # ---- queries ----------------------------------------------------------------------

    def tokens(self, query: str | os.PathLike) -> QueryTokens:
        """A file's tokens (embedded with the cache's backbones) or ``VIDEO_ID@START-END``'s cached tokens."""
        text = os.fspath(query)
        if not Path(text).exists() and "@" in text:
            found = cached_query(self.cache, text)
            if found is not None:
                return found
        return self.backbones.encode(text)

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

    @torch.no_grad()
    def _clip_scores(self, tokens: QueryTokens, side: str, hits: list[Hit]) -> list[float]:
        from avfeat.align.scores import pairwise_scores

        if side == AUDIO:
            query = project_audio(self.heads, tokens.audio)[None]
        elif self.aggregation == "max-mean":
            # The query's salient patches as one frame (CLS slot unused by max-mean).
            found = salient_patches(self.heads, tokens.visual)
            query = torch.cat([torch.zeros_like(found[:1]), found])[None, None]
        else:
            query = project_visual(self.heads, tokens.visual)[None]
        scores = []
        for hit in hits:
            if side == AUDIO:
                visual = project_visual(self.heads, self.cache.visual_tokens(hit.video_id, hit.start, hit.end))[None]
                scores.append(float(pairwise_scores(query, visual, self.aggregation)[0, 0]))
            else:
                audio = project_audio(self.heads, self.cache.audio_tokens(hit.video_id, hit.start, hit.end))[None]
                scores.append(float(pairwise_scores(audio, query, self.aggregation)[0, 0]))
        return scores

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
