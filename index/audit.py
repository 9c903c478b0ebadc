"""The corpus audit: does each video's sound belong to its pictures, is it in sync, is it silent
or static; the table that `train-head --exclude` / `--weight-by` and `--fix-dir` read.

The audit table (``audit.parquet``) has one row per video of the cache with tokens:

- ``video_id``, ``path``;
- ``correspondence``: the video's clip score (max-mean over its aligned windows) set against
  the same audio with other videos' pictures and the same pictures with other videos' audio
  (see :func:`correspondence_scores`); 0 is what an unrelated pair scores;
- ``p_match``: the calibrated probability that the sound, as it is timed, belongs to these
  pictures (see :class:`MatchCalibration`);
- ``offset`` (seconds, positive = audio late), ``sync_confidence`` (the sync curve's peak
  margin) and ``p_sync``: the calibrated probability that ``offset`` is within one
  ``SYNC_STEP`` of the truth (see :class:`SyncCalibration`);
- ``silent``, ``static``: flags from the tokens' spread over time, with the spreads;
- ``worst_windows``: the windows whose sound matches their pictures least.

The table's schema metadata (``avfeat.audit``) records the cache's and the heads' fingerprints,
so a table is only ever applied to the cache it describes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from avfeat.errors import InputError, QueryError

AUDIT_META_KEY = b"avfeat.audit"
AUDIT_VERSION = 1
# One step of offset: an estimate within this of the truth counts as right (``p_sync``).
SYNC_STEP = 0.2


# Videos per group: each video's sound is set against the other videos' pictures of its
# group (and its pictures against their sounds), so memory stays bounded at any corpus size.
GROUP_SIZE = 16
# Windows per video compared with the group's other videos (evenly spaced).
SAMPLED_WINDOWS = 8
# A track whose tokens spread less than this share of the cache's median spread is flagged
# (silent audio, static pictures); tokens that do not vary at all are flagged in any cache.
FLAT_SHARE, FLAT_FLOOR = 0.15, 1e-4
# Synthetic shifts per calibration video (see SyncCalibration) and how many videos take part.
SYNC_TRIALS, SYNC_TRIAL_VIDEOS = 3, 48


@dataclass
class VideoAudit:
    """What the audit measures of one video before calibration."""

    record: object  # VideoRecord
    window_starts: np.ndarray  # (W,) seconds
    window_scores: np.ndarray  # (W,) max-mean of each aligned window
    sampled_audio: "torch.Tensor"  # (M, T, D) projected tokens of the sampled windows
    sampled_visual: "torch.Tensor"  # (M, F, 1 + P, D)
    audio_spread: float
    visual_spread: float
    correspondence: float = float("nan")
    baseline: float = float("nan")  # what unrelated pairs score against this video
    offset: float = float("nan")
    sync_confidence: float = 0.0


def spread(tokens: np.ndarray) -> float:
    """How much a track's tokens vary over time: the mean cosine distance of each token to the
    track's mean token (0 for a constant track: digital silence, a still picture)."""
    import torch

    x = torch.as_tensor(np.asarray(tokens), dtype=torch.float32).flatten(1)
    if len(x) < 2:
        return 0.0
    x = torch.nn.functional.normalize(x, dim=-1)
    mean = torch.nn.functional.normalize(x.mean(dim=0), dim=-1)
    return float((1.0 - x @ mean).clamp(min=0).mean())


def measure_video(record, audio_raw: np.ndarray, frames_raw: np.ndarray, frame_times: np.ndarray, heads, geometry: "WindowGeometry",
                  hop: float, aggregation: str, batch: int = 32) -> VideoAudit | None:
    """Every aligned window's clip score, the sampled windows' projected tokens and the spreads
    of one video's cached tokens; None when it is shorter than one window."""
    import torch

    from avfeat.align.scores import paired_scores
    from avfeat.align.windows import video_windows

    windows = video_windows(record, frame_times, geometry, hop)
    if not windows:
        return None
    device = next(heads.parameters()).device
    scores = []
    sampled = set(np.linspace(0, len(windows) - 1, min(SAMPLED_WINDOWS, len(windows))).round().astype(int).tolist())
    kept_audio, kept_visual = [], []
    for begin in range(0, len(windows), batch):
        chunk = windows[begin : begin + batch]
        audio = np.stack([audio_raw[w.audio : w.audio + geometry.audio_tokens] for w in chunk])
        visual = np.stack([frames_raw[w.frame : w.frame + geometry.frames] for w in chunk])
        with torch.no_grad():
            a = heads.project_audio(torch.as_tensor(audio, dtype=torch.float32, device=device)).float()
            v = heads.project_visual(torch.as_tensor(visual, dtype=torch.float32, device=device)).float()
            scores.append(paired_scores(a, v, aggregation).cpu())
        keep = [k - begin for k in range(begin, begin + len(chunk)) if k in sampled]
        kept_audio.append(a[keep].cpu())
        kept_visual.append(v[keep].cpu())
    visual_cls = frames_raw[:, 0] if frames_raw.ndim == 3 else frames_raw
    return VideoAudit(
        record, np.array([w.start for w in windows]), torch.cat(scores).double().numpy(),
        torch.cat(kept_audio), torch.cat(kept_visual), spread(audio_raw), spread(visual_cls),
    )


def group_scores(group: list[VideoAudit], aggregation: str) -> np.ndarray:
    """(G, G) video scores within a group: entry (i, j) is the mean clip score of video i's
    sampled audio windows against video j's sampled visual windows, window m with window m."""
    import torch

    from avfeat.align.scores import pairwise_scores

    size = len(group)
    total, count = np.zeros((size, size)), np.zeros((size, size))
    for m in range(max(len(v.sampled_audio) for v in group)):
        have = [k for k, v in enumerate(group) if m < len(v.sampled_audio)]
        audio = torch.stack([group[k].sampled_audio[m] for k in have])
        visual = torch.stack([group[k].sampled_visual[m] for k in have])
        with torch.no_grad():
            block = pairwise_scores(audio, visual, aggregation).double().numpy()
        total[np.ix_(have, have)] += block
        count[np.ix_(have, have)] += 1
    return total / np.maximum(count, 1)


def centre(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A group's (own correspondence, unrelated-pair scores, baselines) from its (G, G) scores,
    centred both ways: each pair's score less its audio's median against the other pictures,
    less its pictures' median against the other sounds, plus the median of all unrelated pairs.
    A sound that matches every picture, or a picture that matches every sound, is held to what
    it scores anyway: what is left is whether this sound and these pictures go together."""
    size = len(scores)
    others = ~np.eye(size, dtype=bool)
    audio_median = np.array([np.median(scores[i, others[i]]) for i in range(size)])
    visual_median = np.array([np.median(scores[others[:, j], j]) for j in range(size)])
    baseline = audio_median[:, None] + visual_median[None, :] - np.median(scores[others])
    centred = scores - baseline
    return np.diag(centred).copy(), centred[others], np.diag(baseline).copy()


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
    skipped: list[str]  # videos shorter than one window (no row)


def _groups(count: int, seed: int) -> list[np.ndarray]:
    """Shuffled indices in near-equal groups of about GROUP_SIZE (never a lone video)."""
    order = np.random.default_rng(seed).permutation(count)
    return [part for part in np.array_split(order, max(1, round(count / GROUP_SIZE))) if len(part)]


def _flags(spreads: np.ndarray) -> np.ndarray:
    return spreads <= max(FLAT_FLOOR, FLAT_SHARE * float(np.median(spreads)))


def audit_cache(cache, checkpoint, max_offset: float = 2.0, worst: int = 3, seed: int = 0, progress=None) -> AuditResult:
    """Audit every video of ``cache`` with tokens; see the module docstring for the columns.

    Args:
        progress: optional callable wrapping an iterable of videos (a tqdm bar).
    """
    from avfeat.align.windows import WindowGeometry
    from avfeat.index.sync import sync_tokens

    checkpoint.check_cache(cache)
    heads = checkpoint.heads.eval()
    geometry = WindowGeometry.for_cache(cache, checkpoint.window)
    aggregation = checkpoint.aggregation
    records = cache.records(status="ok")
    measured: list[VideoAudit] = []
    skipped: list[str] = []
    null: list[np.ndarray] = []
    todo = [g for g in _groups(len(records), seed)]
    bar = progress(range(len(records))) if progress else None
    for group in todo:
        members = []
        for k in group:
            record = records[int(k)]
            audio, frames, times = cache.read_audio(record), cache.read_frames(record), cache.frame_times(record)
            video = measure_video(record, audio, frames, times, heads, geometry, checkpoint.hop, aggregation)
            if bar is not None:
                bar.update(1)
            if video is None:
                skipped.append(record.video_id)
                continue
            try:
                result = sync_tokens(heads, audio, record.audio_start, record.audio_rate, frames, times, record.fps, max_offset)
                video.offset, video.sync_confidence = result.offset, result.confidence
            except QueryError:  # too short for any lag: no offset, no confidence
                pass
            members.append(video)
        if len(members) >= 3:
            own, cross, baseline = centre(group_scores(members, aggregation))
            for video, value, base in zip(members, own, baseline):
                video.correspondence, video.baseline = float(value), float(base)
            null.append(cross)
        for video in members:  # the sampled tokens were for this group only
            video.sampled_audio = video.sampled_visual = None
        measured.extend(members)
    if bar is not None:
        bar.close()
    # A group left with fewer than 3 measured videos (short ones skipped) has no impostors to
    # centre on; its videos are scored against the cache's typical baseline instead.
    ready = [v for v in measured if np.isfinite(v.correspondence)]
    if len(ready) < 3:
        raise InputError(f"the audit needs at least 3 videos of {checkpoint.window:g} s or longer with tokens; the cache has {len(ready)}")
    typical = float(np.median([v.baseline for v in ready]))
    for video in measured:
        if not np.isfinite(video.correspondence):
            video.baseline = typical
            video.correspondence = float(video.window_scores.mean() - typical)
    own = np.array([v.correspondence for v in measured])
    match = MatchCalibration.fit(own, np.concatenate(null), seed=seed)
    p_match = match.probability(own)
    sync = fit_sync_calibration(cache, heads, [v.record for v, p in sorted(zip(measured, p_match), key=lambda vp: -vp[1])],
                                max_offset, seed)
    p_sync = sync.probability(np.array([v.sync_confidence for v in measured]))
    audio_flat = _flags(np.array([v.audio_spread for v in measured]))
    visual_flat = _flags(np.array([v.visual_spread for v in measured]))
    rows = []
    for k, video in enumerate(measured):
        relative = video.window_scores - video.baseline
        lowest = np.argsort(relative, kind="stable")[:worst]
        rows.append({
            "video_id": video.record.video_id, "path": video.record.path, "duration": float(video.record.duration),
            "correspondence": video.correspondence, "p_match": float(p_match[k]),
            "offset": float(video.offset), "sync_confidence": float(video.sync_confidence), "p_sync": float(p_sync[k]),
            "silent": bool(audio_flat[k]), "static": bool(visual_flat[k]),
            "audio_spread": video.audio_spread, "visual_spread": video.visual_spread,
            "worst_windows": [{"start": float(video.window_starts[i]), "end": float(video.window_starts[i] + geometry.seconds),
                               "score": float(relative[i])} for i in lowest],
        })
    meta = {
        "heads": {"path": str(Path(checkpoint.path).resolve()), "fingerprint": checkpoint.fingerprint},
        "window": geometry.seconds, "hop": checkpoint.hop, "max_offset": max_offset, "seed": seed,
        "match_calibration": match.describe(), "sync_calibration": sync.describe(), "skipped": skipped,
    }
    return AuditResult(rows, meta, skipped)


def fit_sync_calibration(cache, heads, ranked_records, max_offset: float, seed: int) -> SyncCalibration:
    """Fit :class:`SyncCalibration` on the best-matching videos (``ranked_records``, best first):
    each gets SYNC_TRIALS lags drawn within 80% of ``max_offset``, its audio timeline is moved
    by each and the sync search's answer is right when within SYNC_STEP of the lag. The videos
    are taken to be in sync: a few that are not only make the probabilities more modest."""
    from avfeat.index.sync import sync_tokens

    rng = np.random.default_rng([seed, 0x5C])
    confidence, correct = [], []
    for record in ranked_records[:SYNC_TRIAL_VIDEOS]:
        audio, frames, times = cache.read_audio(record), cache.read_frames(record), cache.frame_times(record)
        for lag in rng.uniform(-0.8 * max_offset, 0.8 * max_offset, SYNC_TRIALS):
            # Later audio timestamps by ``lag``: the sound of each frame is then heard ``lag`` late.
            try:
                result = sync_tokens(heads, audio, record.audio_start + lag, record.audio_rate, frames, times, record.fps, max_offset)
            except QueryError:
                continue
            confidence.append(result.confidence)
            correct.append(abs(result.offset - lag) <= SYNC_STEP)
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
        ("correspondence", pa.float64()), ("p_match", pa.float64()),
        ("offset", pa.float64()), ("sync_confidence", pa.float64()), ("p_sync", pa.float64()),
        ("silent", pa.bool_()), ("static", pa.bool_()), ("audio_spread", pa.float64()), ("visual_spread", pa.float64()),
        ("worst_windows", pa.list_(window)),
    ])


def write_audit(path: str | Path, rows: list[dict], cache, meta: dict | None = None) -> None:
    """Write an audit table for ``cache`` atomically; ``meta`` adds to the recorded metadata
    (heads, calibration). Missing columns of a row are written as null."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from avfeat.common import write_atomic

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

    from avfeat.common import write_output_file

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
            f"<td>{row['p_match']:.3f}</td><td>{row['correspondence']:+.4f}</td><td>{row['offset']:+.2f} s (p {row['p_sync']:.2f})</td>"
            f"<td>{flags}</td><td><small>{escape(spans)}</small></td></tr>"
        )
    silent = sum(r["silent"] for r in rows)
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
<table><tr><th></th><th>video</th><th>p_match</th><th>correspondence</th><th>offset</th><th>flags</th><th>worst windows</th></tr>{"".join(lines)}</table>
<p><small>Calibration: {escape(json.dumps(meta['match_calibration']))}; {escape(json.dumps(meta['sync_calibration']))}</small></p>
</body></html>
"""
    write_output_file(path, page.encode())


# --------------------------------------------------------------------------------------------
# Repair and the command
# --------------------------------------------------------------------------------------------


def fix_plan(rows: list[dict], out_dir: Path, min_confidence: float) -> tuple[list[tuple[dict, Path]], list[str]]:
    """Which videos ``--fix-dir`` remuxes, where to, and why the others that are off are not.

    A video is fixed when its offset is off by more than half a step, ``p_sync`` reaches
    ``min_confidence`` and its sound belongs to its pictures (``p_match`` ≥ 0.5: shifting a
    foreign soundtrack repairs nothing). Segments and remote files are left with a note: a
    remux rewrites a whole local file."""
    plan, notes = [], []
    names: dict[str, str] = {}
    for row in rows:
        if not (abs(row["offset"]) > SYNC_STEP / 2 and row["p_sync"] >= min_confidence and row["p_match"] >= 0.5):
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


def audit(
    cache: Path = typer.Argument(..., help="A cache folder written by `avfeat extract`."),
    heads: Path = typer.Option(..., "--heads", help="Heads checkpoint trained on this cache's backbones (`avfeat train-head`)."),
    out: Path = typer.Option(Path("audit.parquet"), "--out", "-o", help="The audit table to write (Parquet, one row per video)."),
    report: Optional[Path] = typer.Option(None, "--report", help="The HTML report (default: OUT with .html); 'none' writes none."),
    worst: int = typer.Option(20, "--worst", min=0, help="Videos shown in the report, least likely to match first."),
    windows: int = typer.Option(3, "--windows", min=1, help="Worst-matching windows listed per video."),
    max_offset: float = typer.Option(2.0, "--max-offset", help="Largest offset searched, seconds either way."),
    fix_dir: Optional[Path] = typer.Option(None, "--fix-dir", help="Write a copy of each out-of-sync video with its audio shifted back into this folder (remuxed, pictures untouched)."),
    min_confidence: float = typer.Option(0.9, "--min-confidence", help="With --fix-dir: fix only offsets whose p_sync reaches this."),
    seed: int = typer.Option(0, "--seed", help="Seed of the grouping and of the synthetic shifts that calibrate p_sync."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out table (and report), and files in --fix-dir."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Score every video of a cache: does its sound belong to its pictures, is it in sync, is it silent or static.

    With --fix-dir and an existing --out table of this cache and these heads, the table is used as it is (no new audit).
    """
    from avfeat.common import check_number, prepare_output_file, resolve_device
    from avfeat.data.cache import Cache
    from avfeat.index.store import load_heads

    check_number("--max-offset", max_offset)
    check_number("--min-confidence", min_confidence, inclusive=True, maximum=1.0)
    report = None if report is not None and str(report) == "none" else (report or out.with_suffix(".html"))
    reuse = False
    prepare_output_file(out, "--out")
    if report is not None:
        prepare_output_file(report, "--report")
    checkpoint = load_heads(heads, device=str(resolve_device(device)))
    with Cache(cache) as store:
        checkpoint.check_cache(store)
        if out.exists() and not overwrite:
            table = read_audit(out, store) if fix_dir is not None else None
            if table is None or table.meta.get("heads", {}).get("fingerprint") != checkpoint.fingerprint:
                raise InputError(f"--out {out} exists; add --overwrite to replace it" + (" (it is not this cache's and these heads' audit, so --fix-dir cannot reuse it)" if fix_dir is not None else ""))
            reuse = True
        if fix_dir is not None:
            if fix_dir.exists() and not fix_dir.is_dir():
                raise InputError(f"--fix-dir {fix_dir} is a file, not a folder")
        if reuse:
            rows, meta = table.rows, table.meta
        else:
            progress = None
            if not quiet:
                from tqdm import tqdm

                def progress(items):
                    return tqdm(total=len(items), desc="audit", unit="video", dynamic_ncols=True)

            result = audit_cache(store, checkpoint, max_offset=max_offset, worst=windows, seed=seed, progress=progress)
            rows = result.rows
            write_audit(out, rows, store, result.meta)
            meta = read_audit(out).meta
    if not reuse:
        if report is not None:
            write_report(report, rows, meta, worst)
        mismatched = sum(r["p_match"] < 0.5 for r in rows)
        shifted = sum(abs(r["offset"]) > SYNC_STEP / 2 and r["p_sync"] >= 0.5 for r in rows)
        skipped = f"; {len(result.skipped)} shorter than one window not audited" if result.skipped else ""
        typer.echo(f"audited {len(rows)} videos: {mismatched} likely mismatched (p_match < 0.5), {shifted} out of sync (p_sync ≥ 0.5), "
                   f"{sum(r['silent'] for r in rows)} silent, {sum(r['static'] for r in rows)} static{skipped}")
        typer.echo(f"wrote {out}" + (f" and {report}" if report is not None else ""))
    if fix_dir is not None:
        _fix(rows, fix_dir, min_confidence, overwrite, out)


def _fix(rows: list[dict], fix_dir: Path, min_confidence: float, overwrite: bool, source: Path) -> None:
    from avfeat.index.sync import remux_shifted

    plan, notes = fix_plan(rows, fix_dir, min_confidence)
    existing = [target for _, target in plan if target.exists()]
    if existing and not overwrite:
        raise InputError(f"--fix-dir {fix_dir} already holds {len(existing)} of the {len(plan)} files to write (e.g. {existing[0].name}); add --overwrite or choose another folder")
    fix_dir.mkdir(parents=True, exist_ok=True)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    for row, target in plan:
        remux_shifted(row["path"], target, row["offset"])
    typer.echo(f"fixed {len(plan)} videos into {fix_dir} (offset beyond {SYNC_STEP / 2:g} s, p_sync ≥ {min_confidence:g}, p_match ≥ 0.5) from {source}")


def register(app: typer.Typer) -> None:
    app.command()(audit)
