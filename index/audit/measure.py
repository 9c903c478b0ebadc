"""What the audit measures of each video, and :func:`audit_cache`, which measures a whole cache,
calibrates the measures (``calibration.py``) and makes the table's rows.

What is measured. The sync search (``index/sync.py``) scores every frame against the sound at
every lag within ±max_offset, centred so that pictures that match every sound and sounds that
match every picture do not count: what is left is whether *this* sound goes with *these*
pictures at *this* moment. A video's ``correspondence`` is that curve at lag 0 less its median
over the lags: how much better the sound fits the pictures as they are timed than shifted
elsewhere. Another video's soundtrack, a foreign sound over the scene, silence and a shifted
track all lower it; a still picture gives no evidence either way (and is flagged ``static``).

Set against the other videos: each video's sound is also scored, the same way, against the
pictures of ``CROSS_PAIRS`` other videos (the first ``CROSS_SECONDS`` of each). Those pairs are
unrelated by construction; their scores are what ``p_match`` is calibrated against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avfeat.core.errors import InputError, QueryError
from avfeat.data.audit_table import AuditRow, WorstWindow
from avfeat.data.records import nearest_index
from avfeat.extract.tasks import SILENT_DB
from avfeat.index.audit.calibration import MatchCalibration, fit_sync_calibration

# Each video's sound is set against the pictures of this many others of its group of
# GROUP_SIZE (read together, so each video is read once), over their first CROSS_SECONDS.
CROSS_PAIRS, GROUP_SIZE, CROSS_SECONDS = 4, 8, 120.0
# Static: frames whose tokens spread less than this share of the cache's median spread, or
# not at all (a still picture).
FLAT_SHARE, FLAT_FLOOR = 0.05, 1e-5


@dataclass
class Tokens:
    """One video's cached tokens and timing, as the sync search takes them."""

    audio: np.ndarray
    audio_start: float
    audio_rate: float
    frames: np.ndarray
    frame_times: np.ndarray
    fps: float

    @classmethod
    def read(cls, cache, record) -> "Tokens":
        """The video's tokens as cache views: read a time chunk at a time, never held whole."""
        return cls(cache.audio_view(record), record.audio_start, record.audio_rate, cache.frame_view(record), cache.frame_times(record), record.fps)

    def first_tokens(self, chunk: int = 256) -> np.ndarray:
        """(F, D_v) each frame's first token (CLS), read ``chunk`` frames at a time (copied out: a
        view would keep each chunk's whole frames alive)."""
        if self.frames.ndim != 3:
            return np.asarray(self.frames[:])
        parts = [np.asarray(self.frames[i : i + chunk])[:, 0].copy() for i in range(0, len(self.frames), chunk)]
        return np.concatenate(parts) if parts else np.zeros((0, self.frames.shape[-1]), np.float32)

    def excerpt(self, heads, seconds: float) -> "Tokens":
        """The first ``seconds`` of the video, projected through the heads once."""
        from avfeat.index.vectors import project_audio, project_visual

        begin = self.frame_times[0] if len(self.frame_times) else 0.0
        frames = self.frame_times < begin + seconds
        reach = int(np.flatnonzero(frames)[-1]) + 1 if frames.any() else 0  # read only up to the last frame kept
        audio = min(max(0, nearest_index(begin + seconds - self.audio_start, self.audio_rate)), len(self.audio))
        return Tokens(project_audio(heads, self.audio[:audio]), self.audio_start, self.audio_rate,
                      project_visual(heads, np.asarray(self.frames[:reach])[frames[:reach]]), self.frame_times[frames], self.fps)


@dataclass
class Measure:
    """What the audit measures of one video before calibration."""

    record: object  # VideoRecord
    correspondence: float  # lag-0 score less the curve's median
    peak: float  # the best lag's score less the curve's median
    offset: float
    sync_confidence: float
    frame_times: np.ndarray  # (F,)
    frame_scores: np.ndarray  # (F,) each frame's lag-0 score less the curve's median (NaN: cannot take lag 0)
    visual_spread: float


@dataclass
class AuditResult:
    rows: list[AuditRow]
    meta: dict
    skipped: list[str]  # videos too short to compare sound and pictures (no row)


def lag_zero(heads, sound: Tokens, pictures: Tokens, max_offset: float, projected: bool = False):
    """(correspondence, peak, per-frame lag-0 scores, sync result) of a sound against pictures;
    ``peak`` is the curve's best lag less its median: how well they fit when shifted right."""
    from avfeat.index.sync import estimate, frame_scores, lag_curve

    lags, scores, valid = frame_scores(heads, sound.audio, sound.audio_start, sound.audio_rate, pictures.frames, pictures.frame_times,
                                       pictures.fps, max_offset, projected=projected)
    curve = lag_curve(scores, valid)
    zero = int(np.argmin(np.abs(lags)))
    median = float(np.median(curve[np.isfinite(curve)]))
    per_frame = np.where(valid[:, zero].numpy(), scores[:, zero].numpy() - median, np.nan)
    correspondence = float(curve[zero] - median) if np.isfinite(curve[zero]) else float(np.nanmean(per_frame))
    return correspondence, float(np.max(curve) - median), per_frame, estimate(lags, curve, pictures.fps)


def spread(tokens: np.ndarray) -> float:
    """How much a track's tokens vary over time: the mean cosine distance of each token to the
    track's mean token (0 for a constant track: a still picture, digital silence)."""
    import torch

    x = torch.as_tensor(np.asarray(tokens), dtype=torch.float32).flatten(1)
    if len(x) < 2:
        return 0.0
    x = torch.nn.functional.normalize(x, dim=-1)
    mean = torch.nn.functional.normalize(x.mean(dim=0), dim=-1)
    return float((1.0 - x @ mean).clamp(min=0).mean())


def worst_windows(measure: Measure, seconds: float, hop: float, count: int) -> list[WorstWindow]:
    """The ``count`` windows (the heads' length and hop) whose frames fit their sound least at
    lag 0: where to look first in a doubtful video."""
    times, scores = measure.frame_times, measure.frame_scores
    if not len(times):
        return []
    starts = np.arange(times[0], max(times[0], times[-1] - seconds + 1e-9) + 1e-9, hop)
    windows = []
    for start in starts:
        inside = (times >= start - 1e-9) & (times < start + seconds - 1e-9) & np.isfinite(scores)
        if inside.any():
            windows.append(WorstWindow(float(start), float(start + seconds), float(scores[inside].mean())))
    return sorted(windows, key=lambda w: w.score)[:count]


def _groups(count: int, seed: int) -> list[np.ndarray]:
    """Shuffled indices in near-equal groups of about GROUP_SIZE."""
    order = np.random.default_rng(seed).permutation(count)
    return [part for part in np.array_split(order, max(1, round(count / GROUP_SIZE))) if len(part)]


def static_flags(spreads: np.ndarray) -> np.ndarray:
    return spreads <= max(FLAT_FLOOR, FLAT_SHARE * float(np.median(spreads)))


def audit_cache(cache, checkpoint, max_offset: float = 2.0, worst: int = 3, seed: int = 0, progress=None) -> AuditResult:
    """Audit every video of ``cache`` with tokens; see ``avfeat.data.audit_table`` for the columns.

    Args:
        progress: optional callable taking the number of videos and returning a bar with
            ``update(n)`` and ``close()`` (tqdm).
    """
    checkpoint.check_cache(cache)
    heads = checkpoint.heads.eval()
    records = cache.records(status="ok")
    if len(records) < 2:
        raise InputError(f"the audit sets each video against the others: the cache needs at least 2 videos with tokens (it has {len(records)})")
    measured, skipped, null = _measure_all(cache, heads, records, max_offset, seed, progress)
    if len(null) < 2 or len(measured) < 2:
        # One group of fewer than two measurable videos: nothing unrelated to calibrate against.
        raise InputError(f"the audit needs at least 2 videos long enough to compare sound and pictures; the cache has {len(measured)}")
    own = np.array([m.correspondence for m in measured])
    match = MatchCalibration.fit(own, np.array([pair[0] for pair in null]), seed=seed)
    p_match = match.probability(own)
    peaks = np.array([m.peak for m in measured])
    belong = MatchCalibration.fit(peaks, np.array([pair[1] for pair in null]), seed=seed)
    p_belongs = belong.probability(peaks)
    ranked = [m.record for _, m in sorted(zip(-p_match, measured), key=lambda pair: pair[0])]
    sync = fit_sync_calibration(heads, (Tokens.read(cache, record) for record in ranked), max_offset, seed)
    # Right within a step needs a sound that has a right lag (belongs at some lag) and a search
    # that finds it; the first is calibrated on the unrelated pairs, the second on our shifts.
    p_sync = p_belongs * sync.probability(np.array([m.sync_confidence for m in measured]))
    static = static_flags(np.array([m.visual_spread for m in measured]))
    rows = [_row(m, p_match[k], p_belongs[k], p_sync[k], static[k], worst_windows(m, checkpoint.window, checkpoint.hop, worst))
            for k, m in enumerate(measured)]
    meta = {
        "heads": {"path": str(Path(checkpoint.path).resolve()), "fingerprint": checkpoint.fingerprint},
        "window": checkpoint.window, "hop": checkpoint.hop, "max_offset": max_offset, "seed": seed,
        "match_calibration": match.describe(), "belongs_calibration": belong.describe(), "sync_calibration": sync.describe(), "skipped": skipped,
    }
    return AuditResult(rows, meta, skipped)


def _measure_all(cache, heads, records, max_offset: float, seed: int, progress):
    """Measure each video of ``records``, group by group: (the measures, the ids of the videos
    too short for any lag, the (correspondence, peak) of the unrelated pairs of each group)."""
    measured: list[Measure] = []
    skipped: list[str] = []
    null: list[tuple[float, float]] = []
    bar = progress(len(records)) if progress else None
    for group in _groups(len(records), seed):
        excerpts = {}
        for k in group:
            record = records[int(k)]
            tokens = Tokens.read(cache, record)
            try:
                correspondence, peak, per_frame, result = lag_zero(heads, tokens, tokens, max_offset)
            except QueryError:  # too short for any lag
                skipped.append(record.video_id)
            else:
                measured.append(Measure(record, correspondence, peak, result.offset, result.confidence, tokens.frame_times, per_frame,
                                        spread(tokens.first_tokens())))
                excerpts[int(k)] = tokens.excerpt(heads, CROSS_SECONDS)
            if bar is not None:
                bar.update(1)
        null.extend(_cross_pairs(heads, excerpts, max_offset))
    if bar is not None:
        bar.close()
    return measured, skipped, null


def _row(m: Measure, p_match, p_belongs, p_sync, static, windows: list[WorstWindow]) -> AuditRow:
    level = m.record.audio_level
    return AuditRow(
        video_id=m.record.video_id, path=m.record.path, duration=float(m.record.duration),
        correspondence=m.correspondence, p_match=float(p_match), p_belongs=float(p_belongs),
        offset=float(m.offset), sync_confidence=float(m.sync_confidence), p_sync=float(p_sync),
        # Caches written before the level was recorded: unknown, not "not silent".
        silent=None if level is None else bool(level < SILENT_DB), static=bool(static),
        audio_level=level, visual_spread=m.visual_spread, worst_windows=tuple(windows),
    )


def _cross_pairs(heads, excerpts: dict[int, Tokens], max_offset: float) -> list[tuple[float, float]]:
    """Correspondence of each excerpt's sound with the pictures of the next CROSS_PAIRS excerpts
    of its group (cyclically): pairs unrelated by construction."""
    keys = list(excerpts)
    scores = []
    for i, key in enumerate(keys):
        for step in range(1, min(CROSS_PAIRS, len(keys) - 1) + 1):
            try:
                value, peak, _, _ = lag_zero(heads, excerpts[key], excerpts[keys[(i + step) % len(keys)]], max_offset, projected=True)
            except QueryError:
                continue
            if np.isfinite(value) and np.isfinite(peak):
                scores.append((value, peak))
    return scores
