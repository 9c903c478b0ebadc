"""The audit's numbers without a cache: spreads and the two calibrations."""

from __future__ import annotations

import numpy as np

from avfeat.index.audit.calibration import MatchCalibration, SyncCalibration
from avfeat.index.audit.measure import spread


def calibration_error(probability, outcome, bins=10) -> float:
    which = np.minimum((probability * bins).astype(int), bins - 1)
    return sum((which == b).mean() * abs(probability[which == b].mean() - outcome[which == b].mean()) for b in range(bins) if (which == b).any())


def test_spread_is_zero_for_a_constant_track_and_grows_with_change():
    still = np.tile(np.arange(1.0, 9.0), (20, 1))
    assert spread(still) < 1e-6
    rng = np.random.default_rng(0)
    assert spread(still + rng.normal(0, 0.5, still.shape)) > 10 * spread(still + rng.normal(0, 0.01, still.shape))
    assert spread(rng.normal(size=(1, 8))) == 0.0  # one token: nothing varies


def test_match_calibration_recovers_the_mixture_without_labels():
    rng = np.random.default_rng(1)
    null = rng.normal(0.0, 0.03, size=5000)  # unrelated pairs
    matching = rng.normal(0.15, 0.04, size=700)
    mismatched = rng.normal(0.0, 0.03, size=300)
    own = np.concatenate([matching, mismatched])
    truth = np.concatenate([np.ones(700), np.zeros(300)])
    calibration = MatchCalibration.fit(own, null)
    p = calibration.probability(own)
    assert abs(calibration.null_share - 0.3) < 0.05
    assert calibration_error(p, truth) < 0.05
    order = np.argsort(own)
    assert np.all(np.diff(p[order]) >= 0)  # a higher score never means less belief
    # A cache with no defect: nearly every video matches.
    clean = MatchCalibration.fit(rng.normal(0.15, 0.04, size=500), null)
    assert clean.null_share < 0.05 and clean.probability(np.array([0.15]))[0] > 0.95


def test_match_calibration_of_a_cache_of_unrelated_pairs_says_so():
    rng = np.random.default_rng(2)
    null = rng.normal(0.0, 0.03, size=3000)
    calibration = MatchCalibration.fit(rng.normal(0.0, 0.03, size=300), null)
    assert calibration.null_share > 0.8
    assert np.mean(calibration.probability(rng.normal(0.0, 0.03, size=300))) < 0.2


def test_sync_calibration_fits_the_rate_of_right_answers():
    rng = np.random.default_rng(3)
    confidence = rng.uniform(0, 1, size=4000)
    right = rng.uniform(size=4000) < 1 / (1 + np.exp(-(8 * confidence - 3)))
    calibration = SyncCalibration.fit(confidence, right)
    assert abs(calibration.slope - 8) < 1.0 and abs(calibration.intercept + 3) < 0.5
    assert calibration_error(calibration.probability(confidence), right) < 0.03
    # Every trial right: a finite fit that says "likely right", not a division by zero.
    sure = SyncCalibration.fit(np.linspace(0.2, 0.9, 50), np.ones(50, dtype=bool))
    assert np.all(sure.probability(np.array([0.2, 0.9])) > 0.9)
