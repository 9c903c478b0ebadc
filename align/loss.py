"""Symmetric InfoNCE over a batch's B×B clip scores, with optional temporal negatives and
two small regularisers.

Row i of the score matrix is audio window i against every visual window of the batch; the
positive is the diagonal (the same video and time). The batch holds at most one window per
video, so no off-diagonal pair is a false negative of the same clip.

Temporal negatives: window i of the same video shifted in time. Its score enters as one extra
column in both directions (audio i vs shifted visual i for audio→visual, shifted audio i vs
visual i for visual→audio), so the heads must tell "the right clip" from "the right clip at
the wrong moment", which is what synchronization search needs.

With several processes (see ``distributed.py``) each one passes its rows of the global score
matrix (its audio windows against every visual window, and its visual windows against every
audio window) and where its rows sit in the batch; the processes' mean loss is the loss of the
whole matrix.

Pair weights (``train-head --weight-by``): each row's positive pair may carry a weight (the
video's audited probability that its sound belongs to its pictures), so doubtful pairs pull
less. A row of weight 0 adds no positive term, but its windows stay negatives for the others.

Regularisers (both off by default; the InfoNCE alone reaches the acceptance numbers):
- ``offdiag_weight``: penalises the mean off-diagonal raw score. Max-mean scores of unrelated
  clips sit high (a max over many patches is large even for noise); this pushes that floor
  down without changing the ranking objective.
- ``centroid_weight``: penalises the squared norm of the mean projected token of each modality
  (1 when every token collapses onto one direction, about 0 when they spread over the
  sphere): a cheap guard against token collapse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class LossWeights:
    offdiag: float = 0.0
    centroid: float = 0.0


@dataclass
class LossOutput:
    loss: torch.Tensor  # what is minimised
    info_nce: torch.Tensor  # the symmetric InfoNCE part alone (comparable across settings)
    parts: dict[str, torch.Tensor]


def info_nce(
    scores: torch.Tensor,
    logit_scale: torch.Tensor,
    shifted_a2v: torch.Tensor | None = None,
    shifted_v2a: torch.Tensor | None = None,
    v2a_scores: torch.Tensor | None = None,
    first: int = 0,
    pair_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of the audio→visual and visual→audio cross-entropies over a (B, B) score matrix, or
    over some of its rows.

    Args:
        scores: (B, B) clip scores, row = audio window, column = visual window. With several
            processes: (b, B), the rows of audio windows ``first .. first + b - 1`` of the global
            batch against all B visual windows.
        logit_scale: 1 / temperature (already clamped by the heads).
        shifted_a2v: optional (b,) scores of audio i against its own video's shifted visual
            window: an extra negative column for the audio→visual rows. ``-inf`` entries (no
            shifted window exists) drop out.
        shifted_v2a: the same for the visual→audio rows (shifted audio i against visual i).
        v2a_scores: (b, B) visual windows ``first ..`` against all audio windows; by default
            ``scores.T`` (only right when ``scores`` is the whole square matrix).
        first: global batch position of the first row; row i's positive is column first + i.
        pair_weights: optional (b,) weight of each row's positive pair (both directions); None
            is the plain mean.
    """
    a2v = logit_scale * scores.float()
    v2a = a2v.T if v2a_scores is None else logit_scale * v2a_scores.float()
    target = first + torch.arange(a2v.shape[0], device=a2v.device)
    if shifted_a2v is not None:
        a2v = torch.cat([a2v, _extra_column(shifted_a2v, logit_scale)], dim=1)
    if shifted_v2a is not None:
        v2a = torch.cat([v2a, _extra_column(shifted_v2a, logit_scale)], dim=1)
    if pair_weights is None:
        return 0.5 * (F.cross_entropy(a2v, target) + F.cross_entropy(v2a, target))
    # The mean of w_i * CE_i, not divided by the weights' sum: the trainer scales the weights to
    # mean 1 over the training videos, so the loss keeps its scale on average, and each row's
    # term stays independent of the other rows' weights. That is what lets every process take
    # the mean over its own rows: the mean of those means is the whole batch's weighted mean
    # (dividing by each process's own sum of weights would not add up to it).
    w = pair_weights.to(a2v.device, torch.float32)
    a2v_loss = F.cross_entropy(a2v, target, reduction="none")
    v2a_loss = F.cross_entropy(v2a, target, reduction="none")
    return 0.5 * ((w * a2v_loss).mean() + (w * v2a_loss).mean())


def _extra_column(scores: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """(b,) extra negatives → (b, 1) logits. The -inf entries are put back after scaling:
    scaling -inf itself would give the temperature a NaN gradient (0 · -inf)."""
    scores = scores.float()
    missing = scores.isneginf()
    return (logit_scale * scores.masked_fill(missing, 0.0)).masked_fill(missing, float("-inf"))[:, None]


def contrastive_loss(
    scores: torch.Tensor,
    logit_scale: torch.Tensor,
    weights: LossWeights = LossWeights(),
    shifted_a2v: torch.Tensor | None = None,
    shifted_v2a: torch.Tensor | None = None,
    audio_tokens: torch.Tensor | None = None,
    visual_tokens: torch.Tensor | None = None,
    v2a_scores: torch.Tensor | None = None,
    first: int = 0,
    pair_weights: torch.Tensor | None = None,
) -> LossOutput:
    """InfoNCE plus the weighted regularisers; ``*_tokens`` (projected, any leading shape, the
    whole batch's) are needed only when ``weights.centroid`` is non-zero.

    With some rows only (``first``, ``v2a_scores``: see :func:`info_nce`), the off-diagonal mean
    is over those rows; since every process has as many rows, the mean over processes of this
    loss is the loss of the whole matrix. ``pair_weights``: see :func:`info_nce` (they weight
    the InfoNCE rows only, not the regularisers).
    """
    nce = info_nce(scores, logit_scale, shifted_a2v, shifted_v2a, v2a_scores, first, pair_weights)
    loss, parts = nce, {}
    if weights.offdiag:
        b, n = scores.shape
        off = torch.ones(b, n, dtype=torch.bool, device=scores.device)
        rows = torch.arange(b, device=scores.device)
        off[rows, first + rows] = False
        parts["offdiag"] = scores.float()[off].mean() if n > 1 else scores.new_zeros(())
        loss = loss + weights.offdiag * parts["offdiag"]
    if weights.centroid:
        parts["centroid"] = sum(t.float().flatten(0, -2).mean(dim=0).square().sum() for t in (audio_tokens, visual_tokens))
        loss = loss + weights.centroid * parts["centroid"]
    return LossOutput(loss=loss, info_nce=nce, parts=parts)
