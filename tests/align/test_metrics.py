"""Recall at k and median rank, per instance and per class."""

import numpy as np
import pytest

from avfeat.align.metrics import both_directions, first_positive_ranks, retrieval_metrics


def test_instance_ranks_and_recall():
    scores = np.array([[0.9, 0.1, 0.0], [0.8, 0.7, 0.1], [0.0, 0.5, 0.2]])
    assert first_positive_ranks(scores).tolist() == [1, 2, 2]
    metrics = retrieval_metrics(scores, ks=(1, 2))
    assert metrics == {"R@1": pytest.approx(1 / 3), "R@2": 1.0, "median_rank": 2.0}
    assert both_directions(scores, ks=(1,))["v2a"]["R@1"] == 1.0  # each column's diagonal (0.9, 0.7, 0.2) is its maximum


def test_class_level_uses_the_best_positive_and_ties_count_against():
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.3]])
    labels_q, labels_t = [0, 1], [1, 0, 1]
    assert first_positive_ranks(scores, labels_q, labels_t).tolist() == [1, 2]  # query 1: the tied negative ranks first
    with pytest.raises(ValueError):
        first_positive_ranks(scores, [2, 1], labels_t)


def test_nan_is_the_worst_score():
    """A NaN model must not look perfect: NaN compares false with everything."""
    import numpy as np

    from avfeat.align.metrics import both_directions

    nan = np.full((4, 4), np.nan)
    metrics = both_directions(nan)
    assert metrics["a2v"]["R@1"] == 0.0 and metrics["v2a"]["R@1"] == 0.0
    scores = np.eye(4)
    scores[0, 0] = np.nan  # one broken positive ranks last, the others stay first
    assert both_directions(scores)["a2v"]["R@1"] == 0.75
