"""Projected tokens and window vectors: the one place tokens become searchable vectors.

Indexing, queries, rerank, locate and sync all project tokens here, so a vector means the
same thing whether it came from the cache or from a file embedded at query time.

A window's vectors are ``pooled_audio`` of its projected audio tokens and ``pooled_visual`` of
its projected frames (unit vectors: inner product = cosine).

Visual *queries* of max-mean heads are pooled differently (``salient_patches``): most patches
show background and dominate a plain mean, while max-mean heads are trained to match a sound
to the few patches that show its source, which stand out from the mean patch. Index vectors
stay mean-pooled on purpose: the background is what tells one video from another of the same
class, which ``locate`` needs (salient-pooled window vectors made its votes class-level and
dropped it from 1.0 to 0.85 on the acceptance corpus). Whole videos are never held as
full projected patch tensors when only window vectors are needed: each frame is reduced to a
two-token summary (CLS, mean patch), and ``pooled_visual`` of a stack of summaries equals
``pooled_visual`` of the full frames because every frame has the same number of patches.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from avfeat.align.scores import pooled_audio, pooled_visual
from avfeat.align.windows import Window, WindowGeometry
from avfeat.core.errors import QueryError
from avfeat.index.hits import AUDIO
from avfeat.index.query import SALIENT_FRACTION, QueryTokens


def heads_device(heads) -> torch.device:
    return next(heads.parameters()).device


@torch.no_grad()
def project_audio(heads, tokens: np.ndarray, chunk: int = 16384) -> torch.Tensor:
    """(T, D_a) cached or fresh tokens → (T, dim) float32 unit vectors, on the CPU (computed on
    the heads' device)."""
    x = torch.as_tensor(np.asarray(tokens), dtype=torch.float32)
    if len(x) == 0:
        return torch.zeros(0, heads.config.dim)
    device = heads_device(heads)
    return torch.cat([heads.project_audio(x[i : i + chunk].to(device)).float().cpu() for i in range(0, len(x), chunk)])


@torch.no_grad()
def project_visual(heads, tokens: np.ndarray, chunk: int = 64) -> torch.Tensor:
    """(F, 1 + P, D_v) tokens → (F, 1 + P, dim) float32 unit vectors, on the CPU (computed on the
    heads' device)."""
    x = torch.as_tensor(np.asarray(tokens), dtype=torch.float32)
    if len(x) == 0:
        return torch.zeros(0, 1, heads.config.dim)
    device = heads_device(heads)
    return torch.cat([heads.project_visual(x[i : i + chunk].to(device)).float().cpu() for i in range(0, len(x), chunk)])


@torch.no_grad()
def frame_summaries(heads, tokens: np.ndarray, chunk: int = 64) -> torch.Tensor:
    """(F, 1 + P, D_v) tokens → (F, 2, dim): each frame's projected CLS and mean projected patch.

    Memory stays at one chunk of full frames however long the video is.
    """
    out = []
    for i in range(0, len(tokens), chunk):
        projected = project_visual(heads, tokens[i : i + chunk])
        out.append(torch.stack([projected[:, 0], projected[:, 1:].mean(dim=1)], dim=1))
    return torch.cat(out) if out else torch.zeros(0, 2, heads.config.dim)


@torch.no_grad()
def audio_window_vectors(audio: torch.Tensor, windows: list[Window], geometry: WindowGeometry, chunk: int = 512) -> torch.Tensor:
    """(T, dim) projected audio → (len(windows), dim) pooled unit vectors."""
    steps = torch.arange(geometry.audio_tokens)
    out = []
    for i in range(0, len(windows), chunk):
        starts = torch.tensor([w.audio for w in windows[i : i + chunk]])
        out.append(pooled_audio(audio[starts[:, None] + steps]))
    return torch.cat(out) if out else torch.zeros(0, audio.shape[-1])


@torch.no_grad()
def visual_window_vectors(
    summaries: torch.Tensor, windows: list[Window], geometry: WindowGeometry, aggregation: str, chunk: int = 512
) -> torch.Tensor:
    """(F, 2, dim) frame summaries → (len(windows), dim) pooled unit vectors."""
    steps = torch.arange(geometry.frames)
    out = []
    for i in range(0, len(windows), chunk):
        starts = torch.tensor([w.frame for w in windows[i : i + chunk]])
        out.append(pooled_visual(summaries[starts[:, None] + steps], aggregation))
    return torch.cat(out) if out else torch.zeros(0, summaries.shape[-1])


def _top_salient(patches: torch.Tensor, background: torch.Tensor, k: int) -> torch.Tensor:
    """(..., N, dim) patches → (..., k, dim): the k farthest (1 − cosine) from ``background``."""
    score = 1 - patches @ F.normalize(background, dim=-1)
    top = score.topk(min(k, score.shape[-1]), dim=-1).indices
    return torch.gather(patches, -2, top[..., None].expand(*top.shape, patches.shape[-1]))


@torch.no_grad()
def salient_patches(heads, visual: np.ndarray, fraction: float = SALIENT_FRACTION, chunk: int = 64) -> torch.Tensor:
    """(F, 1 + P, D_v) tokens → (k, dim): the projected patches of a whole visual query that
    stand out most from its mean patch (1 − cosine), k = ``fraction`` of all its patches (at
    least one). A visual query of max-mean heads searches the audio index with their
    normalised mean and reranks with them (``Searcher.search``): its plain mean patch is
    mostly background, which says little about what sounds. Memory holds k patches and one
    chunk of frames."""
    summaries = frame_summaries(heads, visual, chunk)
    background = summaries[:, 1].mean(dim=0)
    k = max(1, int(round(fraction * len(visual) * (visual.shape[1] - 1))))
    kept = torch.zeros(0, summaries.shape[-1])
    for i in range(0, len(visual), chunk):  # a running top-k
        patches = project_visual(heads, visual[i : i + chunk])[:, 1:].reshape(-1, summaries.shape[-1])
        kept = _top_salient(torch.cat([kept, patches]), background, k)
    return kept


@torch.no_grad()
def window_vectors(query: QueryTokens, side: str, heads, geometry: WindowGeometry, hop: float | None, aggregation: str):
    """(windows, (n, dim) unit vectors) of one side of a query.

    A query shorter than one window gives a single window spanning all of it.
    """
    if side not in query.sides():
        raise QueryError(f"query {query.name} has no {side} to search with")
    timeline = query.timeline(geometry.fps)
    windows = timeline.windows(geometry, hop)
    if side == AUDIO:
        audio = project_audio(heads, query.audio)
        if windows:
            return windows, audio_window_vectors(audio, windows, geometry)
        end = query.audio_start + len(audio) / query.audio_rate
        return [Window(query.name, 0, 0, query.audio_start, end)], pooled_audio(audio)[None]
    summaries = frame_summaries(heads, query.visual)
    if windows:
        return windows, visual_window_vectors(summaries, windows, geometry, aggregation)
    times = timeline.frame_times
    start = float(times[0]) if len(times) else 0.0
    return [Window(query.name, 0, 0, start, start + len(summaries) / geometry.fps)], pooled_visual(summaries[None], aggregation)


def mean_vector(vectors: torch.Tensor) -> torch.Tensor:
    """One search vector for a whole query: the normalised mean of its window vectors."""
    return F.normalize(vectors.mean(dim=0, keepdim=True), dim=-1)
