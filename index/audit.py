"""The corpus audit: does each video's sound belong to its pictures, is it in sync, is it silent
or static; the table that `train-head --exclude` / `--weight-by` and `--fix-dir` read.

What is measured. The sync search (``index/sync.py``) scores every frame against the sound at
every lag within ±max_offset, centred so that pictures that match every sound and sounds that
match every picture do not count: what is left is whether *this* sound goes with *these*
pictures at *this* moment. A video's ``correspondence`` is that curve at lag 0 less its median
over the lags: how much better the sound fits the pictures as they are timed than shifted
elsewhere. Another video's soundtrack, a foreign sound over the scene, silence and a shifted
track all lower it; a still picture gives no evidence either way (and is flagged ``static``).

Set against the other videos: each video's sound is also scored, the same way, against the
pictures of ``CROSS_PAIRS`` other videos (the first ``CROSS_SECONDS`` of each). Those pairs are
unrelated by construction; their scores are what ``p_match`` is calibrated against (see
:class:`MatchCalibration`).

The audit table (``audit.parquet``) has one row per video of the cache with tokens:

- ``video_id``, ``path``, ``duration``;
- ``correspondence`` and ``p_match``: the calibrated probability that the sound, as it is
  timed, belongs to these pictures (a shifted track counts as not belonging: its ``offset``
  says by how much);
- ``p_belongs``: the calibrated probability that the sound belongs to these pictures at its
  best lag (the curve's peak less its median, calibrated the same way): high for a shifted
  track, low for another video's;
- ``offset`` (seconds, positive = audio late), ``sync_confidence`` (the curve's peak margin)
  and ``p_sync``: the probability that ``offset`` is within one ``SYNC_STEP`` of the truth,
  ``p_belongs`` times the probability that the search finds the lag of a sound that has one
  (see :class:`SyncCalibration`);
- ``silent`` (the decoded sound's RMS, ``audio_level`` in the manifest, below
  ``SILENT_DB``), ``static`` (the frames' tokens do not change), with ``audio_level`` and
  ``visual_spread``;
- ``worst_windows``: the heads' windows whose frames fit their sound least at lag 0.

The table's schema metadata (``avfeat.audit``) records the cache's and the heads' fingerprints,
so a table is only ever applied to the cache it describes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from avfeat.data.records import nearest_index
from avfeat.core.errors import InputError, QueryError

AUDIT_META_KEY = b"avfeat.audit"
AUDIT_VERSION = 1
# One step of offset: an estimate within this of the truth counts as right (``p_sync``).
SYNC_STEP = 0.2
# Each video's sound is set against the pictures of this many others of its group of
# GROUP_SIZE (read together, so each video is read once), over their first CROSS_SECONDS.
CROSS_PAIRS, GROUP_SIZE, CROSS_SECONDS = 4, 8, 120.0
# Silent: the decoded sound's RMS below this (dBFS). Speech and music sit near -20 to -30;
# a room with nobody in it near -50 to -60.
SILENT_DB = -60.0
# Static: frames whose tokens spread less than this share of the cache's median spread, or
# not at all (a still picture).
FLAT_SHARE, FLAT_FLOOR = 0.05, 1e-5
# Synthetic shifts per calibration video (see SyncCalibration) and how many videos take part.
SYNC_TRIALS, SYNC_TRIAL_VIDEOS = 3, 48


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
        return cls(cache.read_audio(record), record.audio_start, record.audio_rate, cache.read_frames(record), cache.frame_times(record), record.fps)

    def excerpt(self, heads, seconds: float) -> "Tokens":
        """The first ``seconds`` of the video, projected through the heads once."""
        from avfeat.index.vectors import project_audio, project_visual

        begin = self.frame_times[0] if len(self.frame_times) else 0.0
        frames = self.frame_times < begin + seconds
        audio = min(max(0, nearest_index(begin + seconds - self.audio_start, self.audio_rate)), len(self.audio))
        return Tokens(project_audio(heads, self.audio[:audio]), self.audio_start, self.audio_rate,
                      project_visual(heads, self.frames[frames]), self.frame_times[frames], self.fps)


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


def worst_windows(measure: Measure, seconds: float, hop: float, count: int) -> list[dict]:
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
            windows.append({"start": float(start), "end": float(start + seconds), "score": float(scores[inside].mean())})
    return sorted(windows, key=lambda w: w["score"])[:count]


@dataclass
class MatchCalibration:
    """P(the sound belongs to these pictures | correspondence), without labels.

    Unrelated pairs are known exactly: a video's sound against another video's pictures. A
    cache's own pairs are a mixture of such unrelated-looking pairs (share ``null_share``) and
    matching pairs. The unrelated pairs' density is a kernel estimate over every cross pair of
    the groups; the matching pairs' density a normal fitted, with the share, by EM. A video's
    probability is its posterior of the matching part, made non-decreasing in the score.

    Why not a classifier trained with BCE on own against swapped pairs: its positives would be
    the cache's own pairs, defects included, so it would learn to call the corpus's defects
    matching; here the defects fall to the side the unrelated pairs define."""

    null_scores: np.ndarray  # a sample of unrelated pairs' correspondence
    bandwidth: float
    null_share: float
    mean: float
    std: float

    @classmethod
    def fit(cls, own: np.ndarray, null: np.ndarray, iterations: int = 200, sample: int = 20000, seed: int = 0) -> "MatchCalibration":
        own = np.asarray(own, dtype=np.float64)
        null = np.asarray(null, dtype=np.float64)
        if len(null) > sample:  # the kernel estimate's cost grows with the sample; 20k pairs is plenty
            null = np.random.default_rng(seed).choice(null, sample, replace=False)
        iqr = np.subtract(*np.percentile(null, [75, 25]))
        bandwidth = 0.9 * max(min(null.std(), iqr / 1.34), 1e-6) * len(null) ** -0.2  # Silverman's rule
        floor = float(np.percentile(null, 95))
        calibration = cls(null, bandwidth, 0.5, max(float(np.percentile(own, 75)), floor), float(max(own.std(), bandwidth)))
        f_null = calibration.null_density(own)
        for _ in range(iterations):
            matching = calibration._matching(own, f_null)
            weight = matching.sum()
            if weight < 1e-9:  # nothing in the cache looks like a matching pair
                calibration.null_share = 1.0
                break
            calibration.null_share = float(1.0 - matching.mean())
            # Matching pairs score above what unrelated pairs reach: without this floor, a cache
            # of unrelated pairs alone would be split into two look-alike halves.
            calibration.mean = float(max((matching * own).sum() / weight, floor))
            calibration.std = float(max(np.sqrt((matching * (own - calibration.mean) ** 2).sum() / weight), bandwidth))
        return calibration

    def null_density(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        out = np.empty(len(x))
        for begin in range(0, len(x), 1024):  # (1024, sample) at a time
            z = (x[begin : begin + 1024, None] - self.null_scores[None, :]) / self.bandwidth
            out[begin : begin + 1024] = np.exp(-0.5 * z * z).mean(axis=1) / (self.bandwidth * np.sqrt(2 * np.pi))
        return out

    def _matching(self, x: np.ndarray, f_null: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.std
        f_match = np.exp(-0.5 * z * z) / (self.std * np.sqrt(2 * np.pi))
        part = (1.0 - self.null_share) * f_match
        return part / np.maximum(part + self.null_share * f_null, 1e-300)

    def probability(self, x: np.ndarray) -> np.ndarray:
        """Calibrated P(match) of correspondence scores, non-decreasing in the score."""
        x = np.asarray(x, dtype=np.float64)
        order = np.argsort(x)
        p = self._matching(x[order], self.null_density(x[order]))
        # A higher score never means less belief, though the two densities' tails may cross
        # again far out: above the matching mean the belief only rises, below it only falls.
        split = int(np.searchsorted(x[order], self.mean))
        upper = np.maximum.accumulate(p[split:])
        lower = np.minimum.accumulate(p[:split][::-1])[::-1]
        if len(upper) and len(lower):
            lower = np.minimum(lower, upper[0])
        p = np.concatenate([lower, upper])
        out = np.empty_like(p)
        out[order] = p
        return np.clip(out, 0.0, 1.0)

    def describe(self) -> dict:
        return {"method": "mixture of unrelated pairs (kernel estimate) and matching pairs (normal), EM",
                "null_share": round(self.null_share, 4), "matching_mean": round(self.mean, 5), "matching_std": round(self.std, 5),
                "null_pairs": int(len(self.null_scores)), "bandwidth": round(self.bandwidth, 6)}


@dataclass
class SyncCalibration:
    """P(offset within one SYNC_STEP of the truth | sync confidence): a logistic regression fitted
    with cross-entropy on synthetic shifts of the cache's own best-matching videos, whose truth
    is known because the shift is ours: each trial moves a video's audio timeline by a drawn lag
    and asks the sync search to find it again."""

    slope: float
    intercept: float
    trials: int
    right: int

    @classmethod
    def fit(cls, confidence: np.ndarray, correct: np.ndarray, ridge: float = 1e-2) -> "SyncCalibration":
        x = np.asarray(confidence, dtype=np.float64)
        y = np.asarray(correct, dtype=np.float64)
        w = np.zeros(2)
        design = np.stack([x, np.ones_like(x)], axis=1)
        for _ in range(50):  # Newton steps on the ridge-penalised cross-entropy
            p = 1.0 / (1.0 + np.exp(-(design @ w)))
            gradient = design.T @ (p - y) + ridge * w
            hessian = design.T @ (design * (p * (1 - p))[:, None]) + ridge * np.eye(2)
            step = np.linalg.solve(hessian, gradient)
            w -= step
            if np.abs(step).max() < 1e-9:
                break
        return cls(float(w[0]), float(w[1]), int(len(x)), int(y.sum()))

    def probability(self, confidence: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.slope * np.asarray(confidence, dtype=np.float64) + self.intercept)))

    def describe(self) -> dict:
        return {"method": "logistic regression on synthetic shifts of the cache's best-matching videos",
                "slope": round(self.slope, 4), "intercept": round(self.intercept, 4), "trials": self.trials, "right": self.right,
                "step": SYNC_STEP}


@dataclass
class AuditResult:
    rows: list[dict]
    meta: dict
    skipped: list[str]  # videos too short to compare sound and pictures (no row)


def _groups(count: int, seed: int) -> list[np.ndarray]:
    """Shuffled indices in near-equal groups of about GROUP_SIZE."""
    order = np.random.default_rng(seed).permutation(count)
    return [part for part in np.array_split(order, max(1, round(count / GROUP_SIZE))) if len(part)]


def static_flags(spreads: np.ndarray) -> np.ndarray:
    return spreads <= max(FLAT_FLOOR, FLAT_SHARE * float(np.median(spreads)))


def audit_cache(cache, checkpoint, max_offset: float = 2.0, worst: int = 3, seed: int = 0, progress=None) -> AuditResult:
    """Audit every video of ``cache`` with tokens; see the module docstring for the columns.

    Args:
        progress: optional callable taking the number of videos and returning a bar with
            ``update(n)`` and ``close()`` (tqdm).
    """
    checkpoint.check_cache(cache)
    heads = checkpoint.heads.eval()
    records = cache.records(status="ok")
    if len(records) < 2:
        raise InputError(f"the audit sets each video against the others: the cache needs at least 2 videos with tokens (it has {len(records)})")
    measured: list[Measure] = []
    skipped: list[str] = []
    null: list[tuple[float, float]] = []  # (correspondence, peak) of unrelated pairs
    bar = progress(len(records)) if progress else None
    groups = _groups(len(records), seed)
    for group in groups:
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
                                        spread(tokens.frames[:, 0] if tokens.frames.ndim == 3 else tokens.frames)))
                excerpts[int(k)] = tokens.excerpt(heads, CROSS_SECONDS)
            if bar is not None:
                bar.update(1)
        null.extend(_cross_pairs(heads, excerpts, max_offset))
    if bar is not None:
        bar.close()
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
    sync = fit_sync_calibration(cache, heads, ranked, max_offset, seed)
    # Right within a step needs a sound that has a right lag (belongs at some lag) and a search
    # that finds it; the first is calibrated on the unrelated pairs, the second on our shifts.
    p_sync = p_belongs * sync.probability(np.array([m.sync_confidence for m in measured]))
    static = static_flags(np.array([m.visual_spread for m in measured]))
    rows = []
    for k, m in enumerate(measured):
        level = m.record.audio_level
        rows.append({
            "video_id": m.record.video_id, "path": m.record.path, "duration": float(m.record.duration),
            "correspondence": m.correspondence, "p_match": float(p_match[k]), "p_belongs": float(p_belongs[k]),
            "offset": float(m.offset), "sync_confidence": float(m.sync_confidence), "p_sync": float(p_sync[k]),
            # Caches written before the level was recorded: unknown, not "not silent".
            "silent": None if level is None else bool(level < SILENT_DB), "static": bool(static[k]),
            "audio_level": level, "visual_spread": m.visual_spread,
            "worst_windows": worst_windows(m, checkpoint.window, checkpoint.hop, worst),
        })
    meta = {
        "heads": {"path": str(Path(checkpoint.path).resolve()), "fingerprint": checkpoint.fingerprint},
        "window": checkpoint.window, "hop": checkpoint.hop, "max_offset": max_offset, "seed": seed,
        "match_calibration": match.describe(), "belongs_calibration": belong.describe(), "sync_calibration": sync.describe(), "skipped": skipped,
    }
    return AuditResult(rows, meta, skipped)


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


def fit_sync_calibration(cache, heads, ranked_records, max_offset: float, seed: int) -> SyncCalibration:
    """Fit :class:`SyncCalibration` on the best-matching videos (``ranked_records``, best first):
    each gets SYNC_TRIALS lags drawn within 80% of ``max_offset``, its audio timeline is moved
    by each and the sync search's answer is right when within SYNC_STEP of the lag. The videos
    are taken to be in sync: a few that are not only make the probabilities more modest."""
    from avfeat.index.sync import sync_tokens

    rng = np.random.default_rng([seed, 0x5C])
    confidence, correct = [], []
    for record in ranked_records[:SYNC_TRIAL_VIDEOS]:
        tokens = Tokens.read(cache, record)
        for lag in rng.uniform(-0.8 * max_offset, 0.8 * max_offset, SYNC_TRIALS):
            # Later audio timestamps by ``lag``: the sound of each frame is then heard ``lag`` late.
            try:
                result = sync_tokens(heads, tokens.audio, tokens.audio_start + lag, tokens.audio_rate, tokens.frames, tokens.frame_times,
                                     tokens.fps, max_offset)
            except QueryError:
                continue
            confidence.append(result.confidence)
            correct.append(abs(result.offset - lag) <= SYNC_STEP)
    if not confidence:
        raise InputError("no video of the cache is long enough for a synthetic shift; the sync confidence cannot be calibrated")
    return SyncCalibration.fit(np.array(confidence), np.array(correct))


@dataclass
class AuditTable:
    """An audit table read back and checked against a cache: what training and repair use."""

    path: Path
    meta: dict
    rows: list[dict]

    def by_video(self) -> dict[str, dict]:
        return {row["video_id"]: row for row in self.rows}

    def p_match(self) -> dict[str, float]:
        """Every audited video's probability that its sound belongs to its pictures."""
        return {row["video_id"]: float(row["p_match"]) for row in self.rows}


def read_audit(path: str | Path, cache=None) -> AuditTable:
    """Read an audit table; with ``cache``, check that it was made from that very cache (its
    fingerprint) and covers every video of it with tokens. Each problem is one line."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputError(f"audit table {path} does not exist (write one with `avfeat audit CACHE --heads HEADS --out {path.name}`)")
    try:
        table = pq.read_table(path)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise InputError(f"audit table {path} cannot be read as Parquet ({str(error).splitlines()[0]})") from None
    raw = (table.schema.metadata or {}).get(AUDIT_META_KEY)
    if raw is None:
        raise InputError(f"{path} is not an audit table written by `avfeat audit` (no avfeat.audit metadata)")
    meta = json.loads(raw)
    missing_columns = {"video_id", "p_match", "correspondence", "offset", "p_sync"} - set(table.column_names)
    if missing_columns:
        raise InputError(f"audit table {path} lacks the columns {', '.join(sorted(missing_columns))}")
    rows = table.to_pylist()
    broken = [row["video_id"] for row in rows if not (isinstance(row["p_match"], float) and 0.0 <= row["p_match"] <= 1.0)]
    if broken:
        raise InputError(f"audit table {path} is damaged: {len(broken)} rows have no p_match in [0, 1] (e.g. {broken[0]}); run `avfeat audit` again")
    if cache is not None:
        fingerprint = cache.fingerprint()
        if meta["cache"]["fingerprint"] != fingerprint:
            raise InputError(
                f"audit table {path} describes another cache ({meta['cache']['path']}, fingerprint {meta['cache']['fingerprint']}), "
                f"not {cache.layout.root} as it is now (fingerprint {fingerprint}); run `avfeat audit` on this cache"
            )
        audited = {row["video_id"] for row in rows}
        lacking = [r.video_id for r in cache.records(status="ok") if r.video_id not in audited]
        if lacking:
            raise InputError(f"audit table {path} lacks {len(lacking)} videos of the cache (e.g. {lacking[0]}); run `avfeat audit` again")
    return AuditTable(path, meta, rows)


def audit_schema():
    import pyarrow as pa

    window = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("score", pa.float64())])
    return pa.schema([
        ("video_id", pa.string()), ("path", pa.string()), ("duration", pa.float64()),
        ("correspondence", pa.float64()), ("p_match", pa.float64()), ("p_belongs", pa.float64()),
        ("offset", pa.float64()), ("sync_confidence", pa.float64()), ("p_sync", pa.float64()),
        ("silent", pa.bool_()), ("static", pa.bool_()), ("audio_level", pa.float64()), ("visual_spread", pa.float64()),
        ("worst_windows", pa.list_(window)),
    ])


def write_audit(path: str | Path, rows: list[dict], cache, meta: dict | None = None) -> None:
    """Write an audit table for ``cache`` atomically; ``meta`` adds to the recorded metadata
    (heads, calibration). Missing columns of a row are written as null."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from avfeat.core.io import write_atomic

    schema = audit_schema()
    record = {"version": AUDIT_VERSION, "cache": {"path": str(Path(cache.layout.root).resolve()), "fingerprint": cache.fingerprint()}, **(meta or {})}
    table = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
    table = table.replace_schema_metadata({AUDIT_META_KEY: json.dumps(record).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_atomic(path, buffer.getvalue())


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------

REPORT_CUTS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _figure_png(draw) -> str:
    """A matplotlib figure drawn by ``draw(axes)`` as a base64 PNG for an <img>."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(12, 3.2), dpi=90)
    draw(axes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _thumbnail(path: str, time: float) -> str | None:
    import base64
    import io

    from PIL import Image

    from avfeat.extract.media import frame_at

    frame = frame_at(path, time) if Path(path).is_file() else None
    if frame is None:
        return None
    image = Image.fromarray(frame)
    image.thumbnail((160, 120))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return base64.b64encode(buffer.getvalue()).decode()


def threshold_table(rows: list[dict]) -> list[dict]:
    """What each cut on p_match keeps: videos, their share, media hours."""
    hours = sum(r["duration"] or 0.0 for r in rows) / 3600
    table = []
    for cut in REPORT_CUTS:
        kept = [r for r in rows if r["p_match"] >= cut]
        kept_hours = sum(r["duration"] or 0.0 for r in kept) / 3600
        table.append({"cut": cut, "videos": len(kept), "share": len(kept) / max(1, len(rows)), "hours": kept_hours,
                      "hours_share": kept_hours / hours if hours else 0.0})
    return table


def write_report(path: str | Path, rows: list[dict], meta: dict, worst: int = 20) -> None:
    """A self-contained HTML page: score distributions, the threshold table and the ``worst``
    videos (lowest p_match) with a thumbnail of each one's worst window. Every text that comes
    from the cache (ids, paths) is escaped."""
    from html import escape

    from avfeat.core.io import write_output_file

    score = np.array([r["correspondence"] for r in rows])
    p_match = np.array([r["p_match"] for r in rows])
    offset = np.array([r["offset"] for r in rows], dtype=float)

    def draw(axes):
        axes[0].hist(score, bins=40, color="tab:blue")
        axes[0].set_title("correspondence")
        axes[1].hist(p_match, bins=20, range=(0, 1), color="tab:green")
        axes[1].set_title("P(sound belongs to the pictures)")
        axes[2].hist(offset[np.isfinite(offset)], bins=41, color="tab:orange")
        axes[2].set_title("estimated offset (s, + = audio late)")

    cuts = "".join(
        f"<tr><td>p_match ≥ {c['cut']:.1f}</td><td>{c['videos']}</td><td>{c['share']:.1%}</td><td>{c['hours']:.2f}</td><td>{c['hours_share']:.1%}</td></tr>"
        for c in threshold_table(rows)
    )
    lines = []
    for row in sorted(rows, key=lambda r: (r["p_match"], r["correspondence"]))[:worst]:
        window = row["worst_windows"][0] if row["worst_windows"] else None
        picture = _thumbnail(row["path"], (window["start"] + window["end"]) / 2) if window else None
        image = f'<img src="data:image/jpeg;base64,{picture}" alt="">' if picture else "<span class=missing>no picture</span>"
        flags = ", ".join(name for name in ("silent", "static") if row[name]) or "–"
        spans = ", ".join(f"{w['start']:.1f}–{w['end']:.1f} s ({w['score']:+.3f})" for w in row["worst_windows"])
        lines.append(
            f"<tr><td>{image}</td><td><b>{escape(row['video_id'])}</b><br><small>{escape(row['path'])}</small></td>"
            f"<td>{row['p_match']:.3f}</td><td>{row.get('p_belongs') or 0:.3f}</td><td>{row['correspondence']:+.4f}</td><td>{row['offset']:+.2f} s (p {row['p_sync']:.2f})</td>"
            f"<td>{flags}</td><td><small>{escape(spans)}</small></td></tr>"
        )
    silent = sum(bool(r["silent"]) for r in rows)
    static = sum(r["static"] for r in rows)
    shifted = sum(1 for r in rows if abs(r["offset"]) > SYNC_STEP / 2 and r["p_sync"] >= 0.5)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>avfeat audit</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse}} td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}}
.missing{{color:#999}} img{{display:block}}</style></head><body>
<h1>avfeat audit</h1>
<p>{len(rows)} videos of {escape(meta['cache']['path'])}, heads {escape(meta['heads']['path'])}.
{int((p_match < 0.5).sum())} videos are more likely than not mismatched (p_match &lt; 0.5); {shifted} are out of sync by more than {SYNC_STEP / 2:g} s
with p_sync ≥ 0.5; {silent} silent, {static} static.</p>
<img src="data:image/png;base64,{_figure_png(draw)}" alt="score distributions">
<h2>What each cut keeps</h2>
<table><tr><th>cut</th><th>videos</th><th>share</th><th>media hours</th><th>share of hours</th></tr>{cuts}</table>
<h2>The {min(worst, len(rows))} least likely to match</h2>
<table><tr><th></th><th>video</th><th>p_match</th><th>p_belongs</th><th>correspondence</th><th>offset</th><th>flags</th><th>worst windows</th></tr>{"".join(lines)}</table>
<p><small>Calibration: {escape(json.dumps(meta['match_calibration']))}; {escape(json.dumps(meta['sync_calibration']))}</small></p>
</body></html>
"""
    write_output_file(path, page.encode())


# --------------------------------------------------------------------------------------------
# Repair
# --------------------------------------------------------------------------------------------


def fix_plan(rows: list[dict], out_dir: Path, min_confidence: float) -> tuple[list[tuple[dict, Path]], list[str]]:
    """Which videos ``--fix-dir`` remuxes, where to, and why the others that are off are not.

    A video is fixed when its offset is off by more than half a step and ``p_sync`` reaches
    ``min_confidence`` (``p_sync`` already holds whether the sound belongs to the pictures at
    some lag: shifting a foreign soundtrack repairs nothing). Segments and remote files are
    left with a note: a remux rewrites a whole local file."""
    plan, notes = [], []
    names: dict[str, str] = {}
    for row in rows:
        if not (abs(row["offset"]) > SYNC_STEP / 2 and row["p_sync"] >= min_confidence):
            continue
        source = Path(row["path"])
        if "://" in row["path"] or "#" in row["path"] or not source.is_file():
            notes.append(f"{row['video_id']}: {row['path']} is not a local file; not fixed")
            continue
        target = out_dir / f"{row['video_id']}{source.suffix}"
        if str(target) in names:
            notes.append(f"{row['video_id']}: a segment of {row['path']}, which {names[str(target)]} also fixes; not fixed")
            continue
        names[str(target)] = row["video_id"]
        plan.append((row, target))
    return plan, notes


@dataclass
class AuditRun:
    """What `avfeat audit` did: the table's rows (audited now or reused), where they went, and
    the repair."""

    out: Path
    report: Path | None  # the HTML report written (None: none)
    rows: list[dict]
    reused: bool = False  # an existing table of this cache and these heads, used as it is (--fix-dir)
    skipped: list[str] = field(default_factory=list)  # videos shorter than one window: no row
    notes: list[str] = field(default_factory=list)  # out-of-sync videos left unfixed, and why
    fixed: int | None = None  # videos remuxed into the fix folder (None: no fix asked for)

    def counts(self) -> dict[str, int]:
        """Videos likely mismatched, out of sync (both at p ≥ 0.5), silent and static."""
        rows = self.rows
        return {
            "mismatched": sum(r["p_match"] < 0.5 for r in rows),
            "shifted": sum(abs(r["offset"]) > SYNC_STEP / 2 and r["p_sync"] >= 0.5 for r in rows),
            "silent": sum(bool(r["silent"]) for r in rows),
            "static": sum(r["static"] for r in rows),
        }


def run_audit(
    cache: str | Path,
    heads: str | Path,
    out: Path,
    report: Path | None = None,
    worst: int = 20,
    windows: int = 3,
    max_offset: float = 2.0,
    fix_dir: Path | None = None,
    min_confidence: float = 0.9,
    seed: int = 0,
    overwrite: bool = False,
    device: str = "auto",
    progress=None,
    on_audited: Callable[[AuditRun], None] | None = None,
) -> AuditRun:
    """Audit ``cache`` with ``heads`` into the table ``out`` and the HTML ``report`` (None: OUT
    with .html; a path named ``none``: no report), then, with ``fix_dir``, remux the videos out
    of sync by more than half a step at ``p_sync`` ≥ ``min_confidence`` into it.

    With ``fix_dir``, an existing ``out`` table of this cache and these heads is used as it is
    (no new audit, nothing written but the fixes); any other existing table needs ``overwrite``.

    Args:
        progress: as for :func:`audit_cache`.
        on_audited: called with the run once a new table (and report) is written, before any fix.
    """
    from avfeat.core.devices import resolve_device
    from avfeat.core.io import prepare_output_file
    from avfeat.core.values import check_number
    from avfeat.data.cache import Cache
    from avfeat.index.store import load_heads

    check_number("--max-offset", max_offset)
    check_number("--min-confidence", min_confidence, inclusive=True, maximum=1.0)
    out = Path(out)
    report = None if report is not None and str(report) == "none" else Path(report or out.with_suffix(".html"))
    prepare_output_file(out, "--out")
    if report is not None:
        prepare_output_file(report, "--report")
    checkpoint = load_heads(heads, device=str(resolve_device(device)))
    with Cache(cache) as store:
        checkpoint.check_cache(store)
        table = _reusable_table(out, store, checkpoint, fix_dir, overwrite)
        if fix_dir is not None and fix_dir.exists() and not fix_dir.is_dir():
            raise InputError(f"--fix-dir {fix_dir} is a file, not a folder")
        if table is not None:
            run = AuditRun(out, report, table.rows, reused=True)
        else:
            result = audit_cache(store, checkpoint, max_offset=max_offset, worst=windows, seed=seed, progress=progress)
            write_audit(out, result.rows, store, result.meta)
            meta = read_audit(out).meta
            run = AuditRun(out, report, result.rows, skipped=result.skipped)
    if not run.reused:
        if report is not None:
            write_report(report, run.rows, meta, worst)
        if on_audited is not None:
            on_audited(run)
    if fix_dir is not None:
        run.fixed, run.notes = fix_videos(run.rows, fix_dir, min_confidence, overwrite)
    return run


def _reusable_table(out: Path, cache, checkpoint, fix_dir: Path | None, overwrite: bool) -> AuditTable | None:
    """The existing ``out`` table that a fix uses as it is, or None when a new audit replaces
    (or creates) it; an existing table is replaced only with ``overwrite``."""
    if not out.exists() or overwrite:
        return None
    table = read_audit(out, cache) if fix_dir is not None else None
    if table is None or table.meta.get("heads", {}).get("fingerprint") != checkpoint.fingerprint:
        raise InputError(f"--out {out} exists; add --overwrite to replace it" + (" (it is not this cache's and these heads' audit, so --fix-dir cannot reuse it)" if fix_dir is not None else ""))
    return table


def fix_videos(rows: list[dict], fix_dir: Path, min_confidence: float, overwrite: bool) -> tuple[int, list[str]]:
    """Remux each video that :func:`fix_plan` picks into ``fix_dir`` with its audio shifted back;
    (how many, the notes on those left unfixed). Files already there are replaced only with
    ``overwrite``."""
    from avfeat.index.sync import remux_shifted

    plan, notes = fix_plan(rows, fix_dir, min_confidence)
    existing = [target for _, target in plan if target.exists()]
    if existing and not overwrite:
        raise InputError(f"--fix-dir {fix_dir} already holds {len(existing)} of the {len(plan)} files to write (e.g. {existing[0].name}); add --overwrite or choose another folder")
    fix_dir.mkdir(parents=True, exist_ok=True)
    for row, target in plan:
        remux_shifted(row["path"], target, row["offset"])
    return len(plan), notes
