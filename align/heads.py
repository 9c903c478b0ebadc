"""Projection heads: frozen audio and visual tokens → one shared, L2-normalised space.

Their shape is ``HeadConfig`` (``avfeat.data.configs``, torch-free); ``avfeat.align.numpy_heads``
runs the same projection without torch for queries."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from avfeat.data.configs import HeadConfig

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: temperature never below 0.01


class ProjectionHead(nn.Module):
    """LayerNorm + Linear (default), or LayerNorm + a two-layer GELU MLP; output unit-norm."""

    def __init__(self, in_dim: int, dim: int, kind: str = "linear"):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        if kind == "linear":
            self.proj = nn.Linear(in_dim, dim)
        else:
            hidden = max(dim, in_dim)
            self.proj = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.norm(tokens.to(self.norm.weight.dtype))), dim=-1)


class AVHeads(nn.Module):
    """The audio head, the visual head and the learnable InfoNCE temperature."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.audio = ProjectionHead(config.audio_dim, config.dim, config.head)
        self.visual = ProjectionHead(config.visual_dim, config.dim, config.head)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))

    @property
    def logit_scale(self) -> torch.Tensor:
        """1 / temperature, clamped so training cannot blow the logits up."""
        return self.log_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def project_audio(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., T, D_a) audio tokens → (..., T, dim) unit vectors."""
        return self.audio(tokens)

    def project_visual(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., 1 + P, D_v) visual tokens (CLS first) → (..., 1 + P, dim) unit vectors."""
        return self.visual(tokens)
