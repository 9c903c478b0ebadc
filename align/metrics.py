"""Retrieval metrics from a score matrix: recall at k and median rank, per instance or class.

Training validation, the acceptance tests and (later) `avfeat eval` all read numbers from here,
so a "R@1" means the same thing everywhere.
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_KS = (1, 5, 10)


def first_positive_ranks(scores, query_labels=None, target_labels=None) -> np.ndarray:
    """1-based rank of the best-scoring positive target of each query.

    Args:
        scores: (Q, N) similarities, higher is better (torch tensor or array).
        query_labels / target_labels: (Q,) and (N,) labels; target j is a positive for query i
            when the labels are equal. Without labels the positives are the diagonal (query i ↔
            target i; Q must equal N), i.e. instance-level retrieval.

    Ties count against the query: a negative scoring exactly as high as the best positive ranks
    before it, so a collapsed model cannot score well. NaN is the worst score (NaN compares
    false with everything, so left as it is a NaN model would rank its positives first).
    """
    scores = torch.as_tensor(scores, dtype=torch.float64).nan_to_num(nan=float("-inf"))
    q, n = scores.shape
    if query_labels is None and target_labels is None:
        if q != n:
            raise ValueError("instance-level ranks need a square score matrix")
        query_labels = target_labels = np.arange(n)
    positive = torch.as_tensor(np.asarray(query_labels)[:, None] == np.asarray(target_labels)[None, :])
    if not bool(positive.any(dim=1).all()):
        raise ValueError("every query needs at least one positive target")
    best_positive = scores.masked_fill(~positive, float("-inf")).max(dim=1, keepdim=True).values
    negatives_above = ((scores >= best_positive) & ~positive).sum(dim=1)
    return (negatives_above + 1).numpy()


def retrieval_metrics(scores, query_labels=None, target_labels=None, ks=DEFAULT_KS) -> dict[str, float]:
    """``{"R@1": ..., "R@5": ..., "R@10": ..., "median_rank": ...}`` for one direction.

    Pass ``scores`` for audio→visual and ``scores.T`` (labels swapped) for visual→audio.
    See :func:`first_positive_ranks` for the meaning of the labels.
    """
    ranks = first_positive_ranks(scores, query_labels, target_labels)
    metrics = {f"R@{k}": float((ranks <= k).mean()) for k in ks}
    metrics["median_rank"] = float(np.median(ranks))
    return metrics


def both_directions(scores, audio_labels=None, visual_labels=None, ks=DEFAULT_KS) -> dict[str, dict[str, float]]:
    """``{"a2v": metrics, "v2a": metrics}`` from an (audio, visual) score matrix."""
    scores = torch.as_tensor(scores)
    return {
        "a2v": retrieval_metrics(scores, audio_labels, visual_labels, ks),
        "v2a": retrieval_metrics(scores.T, visual_labels, audio_labels, ks),
    }
