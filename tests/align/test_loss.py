"""The contrastive loss against a direct, loop-based computation."""

import math

import torch

from avfeat.align.loss import LossWeights, contrastive_loss, info_nce


def _reference(scores, scale, extra_a2v=None, extra_v2a=None):
    b = len(scores)
    total = 0.0
    for i in range(b):
        row = [scale * scores[i][j] for j in range(b)] + ([scale * extra_a2v[i]] if extra_a2v is not None else [])
        col = [scale * scores[j][i] for j in range(b)] + ([scale * extra_v2a[i]] if extra_v2a is not None else [])
        total += -row[i] + math.log(sum(math.exp(x) for x in row if x != float("-inf")))
        total += -col[i] + math.log(sum(math.exp(x) for x in col if x != float("-inf")))
    return total / (2 * b)


def test_info_nce_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(5, 5, generator=g, dtype=torch.float64) * 2 - 1
    scale = torch.tensor(14.0, dtype=torch.float64)
    assert math.isclose(float(info_nce(scores, scale)), _reference(scores.tolist(), 14.0), rel_tol=1e-6)


def test_temporal_negatives_are_one_extra_column_each_way_and_missing_ones_drop_out():
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(4, 4, generator=g, dtype=torch.float64)
    a2v = torch.tensor([0.9, 0.1, float("-inf"), 0.5], dtype=torch.float64)
    v2a = torch.tensor([0.2, 0.8, float("-inf"), 0.3], dtype=torch.float64)
    got = float(info_nce(scores, torch.tensor(10.0), a2v, v2a))
    assert math.isclose(got, _reference(scores.tolist(), 10.0, a2v.tolist(), v2a.tolist()), rel_tol=1e-6)
    assert got > float(info_nce(scores, torch.tensor(10.0)))  # an extra negative can only add to the loss


def test_perfect_separation_gives_near_zero_loss_and_regularisers_add_their_terms():
    scores = torch.eye(3) * 2 - 1  # positives 1, negatives -1
    scale = torch.tensor(100.0)
    assert float(info_nce(scores, scale)) < 1e-6
    tokens = torch.nn.functional.normalize(torch.ones(2, 3, 4), dim=-1)  # fully collapsed: centroid norm 1
    out = contrastive_loss(scores, scale, LossWeights(offdiag=0.5, centroid=0.1), audio_tokens=tokens, visual_tokens=tokens)
    assert math.isclose(float(out.parts["offdiag"]), -1.0, abs_tol=1e-6)
    assert math.isclose(float(out.parts["centroid"]), 2.0, rel_tol=1e-6)
    assert math.isclose(float(out.loss), float(out.info_nce) - 0.5 + 0.2, abs_tol=1e-5)


def test_a_missing_temporal_negative_leaves_the_temperature_gradient_finite():
    scores = torch.rand(3, 3, generator=torch.Generator().manual_seed(2))
    log_scale = torch.tensor(2.0, requires_grad=True)
    missing = torch.tensor([0.4, float("-inf"), 0.1])
    info_nce(scores, log_scale.exp(), missing, missing).backward()
    assert torch.isfinite(log_scale.grad)


def test_the_rows_of_several_processes_average_to_the_whole_loss():
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(4, 4, generator=g, dtype=torch.float64)
    extra = torch.rand(4, generator=g, dtype=torch.float64)
    tokens = torch.nn.functional.normalize(torch.rand(4, 2, 3, generator=g), dim=-1)
    weights, scale = LossWeights(offdiag=0.5, centroid=0.1), torch.tensor(7.0)
    whole = contrastive_loss(scores, scale, weights, extra, extra, tokens, tokens).loss
    halves = [
        contrastive_loss(scores[rows], scale, weights, extra[rows], extra[rows], tokens, tokens, v2a_scores=scores.T[rows], first=rows.start).loss
        for rows in (slice(0, 2), slice(2, 4))
    ]
    assert math.isclose(float(sum(halves) / 2), float(whole), rel_tol=1e-6)
