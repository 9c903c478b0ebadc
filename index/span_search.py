"""``SpanSearcher``: search with cached spans (``VIDEO_ID@START-END``) in numpy, without torch.

A span's tokens are in the cache already, so its search needs the heads, the index and a few
hundred small products, not the backbones. Importing torch takes longer than all of that on a
small CPU (2.3 s on a 2-core EPYC), so ``avfeat search INDEX VIDEO_ID@START-END`` on a CPU
answers through this class (``avfeat.index.batch``) with ``NumpyHeads``. It gives what
``Searcher.search`` gives for the same span: the same windows, pooling, salient patches and
rerank scores, in float32 (``tests/index/test_span_search.py`` holds the two equal).
"""

from __future__ import annotations

import os

import numpy as np

from avfeat.align.numpy_heads import load_numpy_checkpoint, unit_rows
from avfeat.core.errors import QueryError
from avfeat.index.hits import AUDIO, VISUAL, Hit
from avfeat.index.query import SALIENT_FRACTION, QueryTokens
from avfeat.index.vector_search import VectorSearcher

FRAME_CHUNK = 64  # frames projected at a time: memory stays at one chunk however long the span


def pooled(x: np.ndarray) -> np.ndarray:
    """``pooled_audio``: the unit mean of tokens (axis -2)."""
    return unit_rows(x.mean(axis=-2))


class SpanSearcher(VectorSearcher):
    """An index searched with cached spans; heads in numpy (see the module's note).

    Args:
        index, cache, mmap: as ``VectorSearcher``.
        heads: a checkpoint folder; default: the one meta.json names (other heads are refused).
    """

    def __init__(self, index: str | os.PathLike, heads: str | os.PathLike | None = None, cache=None, mmap: bool | None = None):
        super().__init__(index, cache=cache, mmap=mmap)
        checkpoint = load_numpy_checkpoint(heads or self.meta["heads"]["path"])
        self.folder.check_heads(checkpoint)
        self.heads = checkpoint.heads

    def _frames(self, visual: np.ndarray):
        """Projected frames, a chunk at a time: (F_chunk, 1 + P, dim) arrays."""
        for i in range(0, len(visual), FRAME_CHUNK):
            yield self.heads.project_visual(visual[i : i + FRAME_CHUNK])

    def _summaries(self, visual: np.ndarray) -> np.ndarray:
        """(F, 2, dim): each frame's projected CLS and mean projected patch."""
        parts = [np.stack([frames[:, 0], frames[:, 1:].mean(axis=1)], axis=1) for frames in self._frames(visual)]
        return np.concatenate(parts) if parts else np.zeros((0, 2, self.heads.config.dim), np.float32)

    def _pooled_visual(self, summaries: np.ndarray) -> np.ndarray:
        """``pooled_visual`` of frame summaries (..., F, 2, dim) → (..., dim)."""
        return unit_rows(summaries[..., 0 if self.aggregation == "cls" else 1, :].mean(axis=-2))

    def _salient(self, visual: np.ndarray) -> np.ndarray:
        """(k, dim): the projected patches farthest from the query's mean patch (``salient_patches``)."""
        background = unit_rows(self._summaries(visual)[:, 1].mean(axis=0))
        k = max(1, int(round(SALIENT_FRACTION * len(visual) * (visual.shape[1] - 1))))
        kept = np.zeros((0, self.heads.config.dim), np.float32)
        for frames in self._frames(visual):  # a running top-k, as torch's
            candidates = np.concatenate([kept, frames[:, 1:].reshape(-1, frames.shape[-1])])
            distance = 1 - candidates @ background
            kept = candidates[np.argsort(-distance, kind="stable")[: min(k, len(candidates))]]
        return kept

    def _query_vector(self, tokens: QueryTokens, side: str) -> np.ndarray:
        if side not in tokens.sides():
            raise QueryError(f"query {tokens.name} has no {side} to search with")
        if side == VISUAL and self.aggregation == "max-mean":
            return unit_rows(self._salient(tokens.visual).mean(axis=0, keepdims=True))
        windows = tokens.timeline(self.geometry.fps).windows(self.geometry, self.hop)
        if side == AUDIO:
            audio = self.heads.project_audio(tokens.audio)
            steps = np.arange(self.geometry.audio_tokens)
            vectors = pooled(audio[np.array([w.audio for w in windows])[:, None] + steps]) if windows else pooled(audio)[None]
        else:
            summaries = self._summaries(tokens.visual)
            steps = np.arange(self.geometry.frames)
            vectors = (self._pooled_visual(summaries[np.array([w.frame for w in windows])[:, None] + steps]) if windows
                       else self._pooled_visual(summaries)[None])
        return unit_rows(vectors.mean(axis=0, keepdims=True))

    def _clip_scores(self, tokens: QueryTokens, side: str, hits: list[Hit]) -> list[float]:
        max_mean = self.aggregation == "max-mean"
        if side == AUDIO:
            query = self.heads.project_audio(tokens.audio)
        elif max_mean:
            query = self._salient(tokens.visual)  # patches, as one frame
        else:
            query = self._summaries(tokens.visual)
        scores = []
        for hit in hits:
            if side == AUDIO:
                visual = self.cache.visual_tokens(hit.video_id, hit.start, hit.end)
                if max_mean:
                    patches = np.concatenate([f[:, 1:].reshape(-1, f.shape[-1]) for f in self._frames(visual)])
                    scores.append(_max_mean(query, patches))
                else:
                    scores.append(float(pooled(query) @ self._pooled_visual(self._summaries(visual))))
            else:
                audio = self.heads.project_audio(self.cache.audio_tokens(hit.video_id, hit.start, hit.end))
                scores.append(_max_mean(audio, query) if max_mean else float(pooled(audio) @ self._pooled_visual(query)))
        return scores


def _max_mean(audio: np.ndarray, patches: np.ndarray) -> float:
    """(T, dim) × (N, dim): per audio token the best patch's cosine, averaged (``max_mean``)."""
    return float((audio @ patches.T).max(axis=1).mean())
