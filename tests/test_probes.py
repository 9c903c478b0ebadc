"""The probes of `avfeat eval --labels` on scikit-learn: the linear probe minimises the documented
objective (mean cross-entropy + l2·‖W‖², bias free), kNN votes as documented, mAP does not
depend on the order of tied scores."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from avfeat.probes import knn_scores, mean_average_precision, probe_scores


def _blobs(classes: int, n: int = 36, dim: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, dim)) + 0.8 * rng.normal(size=(classes, dim))[y]
    return x.astype(np.float32), np.eye(classes, dtype=np.float32)[y]


def _reference(x, y, test, multi_label: bool, l2: float) -> np.ndarray:
    """The probe's objective minimised directly: standardised features, one weight row per
    class, mean cross-entropy (softmax, or sigmoid averaged over samples and classes) + l2·‖W‖²."""
    mean, std = x.mean(0), x.std(0)
    x, test = (x - mean) / std, (test - mean) / std
    n, d = x.shape
    c = y.shape[1]

    def logits(params, data):
        return data @ params[: d * c].reshape(d, c) + params[d * c :]

    def objective(params):
        z = logits(params, x)
        if multi_label:
            loss = np.mean(np.logaddexp(0, z) - y * z)
        else:
            loss = np.mean(np.logaddexp.reduce(z, axis=1) - (y * z).sum(1))
        return loss + l2 * np.sum(params[: d * c] ** 2)

    params = minimize(objective, np.zeros(d * c + c), method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-10}).x
    z = logits(params, test)
    if multi_label:
        return 1 / (1 + np.exp(-z))
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


@pytest.mark.parametrize("classes, multi_label", [(2, False), (3, False), (3, True)])
@pytest.mark.parametrize("l2", [1e-3, 0.1])
def test_the_linear_probe_minimises_cross_entropy_plus_l2_times_the_squared_weights(classes, multi_label, l2):
    x, y = _blobs(classes)
    if multi_label:
        y[::4, 0] = 1  # some samples carry two labels
    train, test = slice(0, 28), slice(28, None)
    found = probe_scores(x[train], y[train], x[test], multi_label, l2, seed=0)
    expected = _reference(x[train].astype(np.float64), y[train], x[test].astype(np.float64), multi_label, l2)
    assert found.shape == (8, classes)
    assert np.abs(found - expected).max() < 1e-3


def test_a_training_fold_of_one_class_answers_that_class():
    x, y = _blobs(3)
    one = y[:, 1] == 1
    assert np.array_equal(probe_scores(x[one], y[one], x[:4], False, 1e-3, seed=0), np.tile([0.0, 1.0, 0.0], (4, 1)))


def test_knn_votes_weighted_and_majority():
    train = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], np.float32)  # unit vectors
    labels = np.eye(2, dtype=np.float32)[[0, 1, 1]]
    query = np.array([[0.96, 0.28]], np.float32)  # cosine 0.96 with the first, 0.936 with the second
    # majority, k=2: one vote each; the nearer neighbour's class wins the tie, by less than a vote
    majority = knn_scores(train, labels, query, k=2, vote="majority")[0]
    assert majority[0] > majority[1] > 0.45 and majority.sum() == pytest.approx(1)
    # majority, k=3: two votes beat one nearer
    assert knn_scores(train, labels, query, k=3, vote="majority")[0].argmax() == 1
    # weighted: exp(cosine / 0.07) shares; k beyond the training set is all of it
    cosines = train @ query[0]
    weights = np.exp(cosines / 0.07)
    expected = [weights[0] / weights.sum(), weights[1:].sum() / weights.sum()]
    assert knn_scores(train, labels, query, k=20, vote="weighted")[0] == pytest.approx(expected, rel=1e-5)


def test_map_does_not_depend_on_the_order_of_tied_scores():
    scores = np.array([[0.5], [0.5], [0.2]])
    truth = np.array([[1], [0], [1]])
    assert mean_average_precision(scores, truth) == mean_average_precision(scores[[1, 0, 2]], truth[[1, 0, 2]])
    # classes without a positive are left out of the mean
    both = mean_average_precision(np.hstack([scores, scores]), np.hstack([truth, np.zeros_like(truth)]))
    assert both == mean_average_precision(scores, truth)
