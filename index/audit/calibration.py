"""The audit's two calibrations, both fitted on the cache itself, without labels.

- :class:`MatchCalibration`: P(the sound belongs to these pictures | a score), against the
  scores of pairs unrelated by construction (a video's sound, another's pictures). The audit
  fits it twice: on the lag-0 ``correspondence`` (``p_match``) and on the best lag's peak
  (``p_belongs``).
- :class:`SyncCalibration`: P(the sync search's offset is within ``SYNC_STEP`` of the truth |
  its confidence), on synthetic shifts of the cache's best-matching videos
  (:func:`fit_sync_calibration`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Iterable

import numpy as np

from avfeat.core.errors import InputError, QueryError

# One step of offset: an estimate within this of the truth counts as right (``p_sync``).
SYNC_STEP = 0.2
# Synthetic shifts per calibration video (see SyncCalibration) and how many videos take part.
SYNC_TRIALS, SYNC_TRIAL_VIDEOS = 3, 48


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



def fit_sync_calibration(heads, ranked: Iterable, max_offset: float, seed: int) -> SyncCalibration:
    """Fit :class:`SyncCalibration` on the first SYNC_TRIAL_VIDEOS of the best-matching videos'
    tokens (``ranked``, best first, each with the sync search's audio, audio_start, audio_rate,
    frames, frame_times and fps; only those taken are read): each gets SYNC_TRIALS lags drawn within 80% of ``max_offset``, its audio timeline is moved
    by each and the sync search's answer is right when within SYNC_STEP of the lag. The videos
    are taken to be in sync: a few that are not only make the probabilities more modest."""
    from avfeat.index.sync import sync_tokens

    rng = np.random.default_rng([seed, 0x5C])
    confidence, correct = [], []
    for tokens in islice(ranked, SYNC_TRIAL_VIDEOS):
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
