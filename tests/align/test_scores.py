"""The chunked max-mean equals the naive broadcast, in values and in gradients."""

import pytest
import torch
from torch.nn import functional as F

from avfeat.align.scores import max_mean_chunked, max_mean_naive, pairwise_scores, paired_scores, patches


def _inputs(b_a=5, b_v=7, t=6, frames=2, p=9, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = F.normalize(torch.randn(b_a, t, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    visual = F.normalize(torch.randn(b_v, frames, 1 + p, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    return audio, visual


@pytest.mark.parametrize("chunk_elements", [1, 6 * 18 * 5 * 2, 1 << 25])  # one visual window per chunk, two, all
def test_chunked_max_mean_equals_naive_values_and_gradients(chunk_elements):
    audio, visual = _inputs()
    weights = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    chunked = max_mean_chunked(audio, patches(visual), chunk_elements)
    grads_chunked = torch.autograd.grad((chunked * weights).sum(), (audio, visual))
    naive = max_mean_naive(audio, patches(visual))
    grads_naive = torch.autograd.grad((naive * weights).sum(), (audio, visual))
    torch.testing.assert_close(chunked, naive, rtol=0, atol=1e-12)
    for got, want in zip(grads_chunked, grads_naive):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert grads_naive[1][:, :, 0].abs().sum() == 0  # CLS tokens take no part in max-mean


def test_max_mean_is_mean_over_audio_of_best_patch():
    audio, visual = _inputs(b_a=1, b_v=1)
    sims = audio[0] @ patches(visual)[0].T
    assert torch.allclose(pairwise_scores(audio, visual)[0, 0], sims.max(dim=1).values.mean())


@pytest.mark.parametrize("aggregation", ["max-mean", "mean-pool", "cls"])
def test_paired_scores_are_the_diagonal_of_pairwise(aggregation):
    audio, visual = _inputs(b_a=6, b_v=6)
    full = pairwise_scores(audio, visual, aggregation)
    torch.testing.assert_close(paired_scores(audio, visual, aggregation), full.diagonal())
