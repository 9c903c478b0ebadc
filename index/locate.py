"""Where a clip comes from: voting over (video, time offset) of its windows' matches.

Every window of the clip is searched; each of its top matches votes for "the clip starts at
``hit start − query window start`` in ``hit video``". Votes are binned at one frame interval.
A clip cut from an indexed video makes its windows agree on one (video, offset) while chance
matches scatter, so the fullest bin wins. A bin's support counts its two neighbours too, since
a cut between two frames splits its votes across two bins; the reported time is the mean
offset of the bin's own votes (neighbours' votes lean toward where the video has more windows),
and after a candidate is taken, bins within two frame intervals of it
in the same video are dropped so one source is not listed twice.

``refine`` then re-times, re-ranks and scores the best candidates by matching the clip's
backbone tokens against the cached tokens of each candidate video (see its docstring): voting
finds the video, exact matching the time. The score (mean token cosine) is what ``Searcher.locate``
compares with its calibrated "not found" threshold (``Searcher.locate_threshold``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Candidate:
    video_id: str
    path: str
    time: float  # seconds into the video where the clip starts
    votes: int
    score: float = 0.0  # refine's token match: 1 for the exact source tokens (0 before refining)

    def to_dict(self) -> dict:
        return asdict(self)


def vote(matches, fps: float, k: int = 5) -> list[Candidate]:
    """``matches``: iterable of (video_id, path, offset seconds) → the best ``k`` candidates."""
    bins: dict[tuple[str, int], list[float]] = defaultdict(list)
    paths: dict[str, str] = {}
    for video, path, offset in matches:
        bins[(video, int(round(offset * fps)))].append(offset)
        paths[video] = path

    def near(key, reach):
        video, b = key
        return [bins[(video, b + d)] for d in range(-reach, reach + 1) if (video, b + d) in bins]

    support = {key: sum(len(v) for v in near(key, 1)) for key in bins}
    taken: list[Candidate] = []
    dropped: set[tuple[str, int]] = set()
    for key in sorted(support, key=lambda key: (-support[key], key)):
        if key in dropped:
            continue
        offsets = bins[key]
        taken.append(Candidate(key[0], paths[key[0]], float(sum(offsets) / len(offsets)), support[key]))
        if len(taken) == k:
            break
        dropped.update((key[0], key[1] + d) for d in range(-2, 3))
    return taken


# ---- refinement ------------------------------------------------------------------------------


def _unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def clip_seconds(query) -> float:
    """How long the clip lasts (its longer side): the span a located candidate covers."""
    seconds = 0.0
    if query.audio is not None and len(query.audio):
        seconds = len(query.audio) / float(query.audio_rate)
    if query.visual is not None and len(query.visual) and query.frame_times is not None and len(query.frame_times):
        times = np.asarray(query.frame_times, dtype=np.float64)
        step = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
        seconds = max(seconds, float(times[-1] - times[0]) + step)
    return seconds


def refine(query, candidates: list[Candidate], cache, reach: float, k: int = 5, sides=None) -> list[Candidate]:
    """Re-time and re-rank voted candidates by matching the clip's backbone tokens exactly.

    Window vectors are pooled over a window and the heads are trained to say *what* is seen
    and heard, so neighbouring windows of one video look alike and votes spread over several
    bins. A copy, though, shares the source's backbone tokens almost exactly. For each
    candidate video, every start time within ``reach`` seconds of the voted one, on the audio
    token grid (20 ms at 50 Hz), is scored by the mean cosine of the clip's audio tokens with
    the video's audio tokens at that shift, plus the mean over the clip's frames of the
    token-wise cosine with the video frame nearest in time. The best-scoring (video, start)
    comes first with that score (averaged over the sides used); ``votes`` keep the voting's
    counts. Starts before 0 are not tried (a clip cut from a video starts inside it), and a
    candidate whose span overlaps a better one of the same video is dropped: one placement is
    listed once.

    Args:
        query: the clip's ``QueryTokens`` (either side may be missing).
        candidates: from ``vote``; at most ``k`` are refined and returned.
        cache: the index's cache (raw tokens of the candidate videos).
        reach: seconds around each voted time that are searched.
        sides: the sides to match ("audio", "visual"); default: every side the clip has.
    """
    sides = set(sides or ("audio", "visual"))
    span = clip_seconds(query)
    scored = []
    for cand in candidates[:k]:
        record = cache.ok_record(cand.video_id)
        rate = float(record.audio_rate)
        lo, hi = max(0.0, cand.time - reach), max(0.0, cand.time + reach)  # no start before the video's
        shifts = np.arange(int(np.ceil(lo * rate)), int(np.ceil(hi * rate)) + 1) / rate  # candidate starts
        total = np.zeros(len(shifts))
        parts = 0
        if "audio" in sides and query.audio is not None and len(query.audio):
            parts += 1
            q = _unit(query.audio)
            clip_times = query.audio_start + np.arange(len(q)) / rate
            video = _unit(cache.read_audio(record))
            for j, tau in enumerate(shifts):
                idx = np.array([record.audio_index(t) for t in clip_times + tau], dtype=np.int64)
                ok = (idx >= 0) & (idx < len(video))
                total[j] += float(np.einsum("td,td->t", q[ok], video[idx[ok]]).sum() / len(q)) if ok.any() else 0.0
        if "visual" in sides and query.visual is not None and len(query.visual):
            parts += 1
            q = _unit(query.visual)  # (Fq, 1 + P, D)
            video = _unit(cache.read_frames(record))
            times = cache.frame_times(record)
            sims = np.einsum("fpd,gpd->fg", q, video) / q.shape[1]  # (Fq, Fv) frame similarities
            for j, tau in enumerate(shifts):
                nearest = np.abs(times[None, :] - (query.frame_times[:, None] + tau))
                g = nearest.argmin(axis=1)
                ok = nearest[np.arange(len(g)), g] <= 0.5 / float(record.fps) + 1e-6
                total[j] += float(sims[np.arange(len(g))[ok], g[ok]].sum() / len(g))
        best = int(np.argmax(total))
        score = float(total[best] / max(1, parts))
        scored.append(Candidate(cand.video_id, cand.path, float(shifts[best]), cand.votes, score))
    scored.sort(key=lambda c: -c.score)
    kept: list[Candidate] = []
    for cand in scored:  # voted bins of one source land on overlapping spans: list each placement once
        gap = max(span, 2.0 / float(cache.record(cand.video_id).fps))
        if not any(c.video_id == cand.video_id and abs(c.time - cand.time) < gap for c in kept):
            kept.append(cand)
    return kept
