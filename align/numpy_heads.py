"""Trained heads run in numpy: what a cached-span query needs, without importing torch.

``avfeat search INDEX VIDEO_ID@START-END`` projects a few hundred cached tokens and scores a few
windows; importing torch alone takes longer than that on a small CPU (2.3 s on a 2-core EPYC),
so those queries project with these heads (``avfeat.index.span_search``). They compute what
``avfeat.align.heads.ProjectionHead`` computes, in float32 (tests hold the two equal):
LayerNorm, then Linear (or Linear, exact GELU, Linear), then unit length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avfeat.align.checkpoint import HEADS_FILE, Checkpoint, _finite_weights, fingerprint_bytes, read_heads_file
from avfeat.core.errors import CheckpointError
from avfeat.data.configs import HeadConfig

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which ProjectionHead uses
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x / max(‖x‖, eps)`` along the last axis, as ``F.normalize`` does."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), NORMALIZE_EPS)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7, under float32's resolution
    near 1): numpy has no erf, and importing scipy's would cost 0.3 s of the span query's second."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def _gelu(x: np.ndarray) -> np.ndarray:
    """``nn.GELU()``: the exact (erf) form, computed in float64."""
    wide = x.astype(np.float64)
    return (0.5 * wide * (1.0 + _erf(wide / np.sqrt(2.0)))).astype(np.float32)


@dataclass
class NumpyHeads:
    """The audio and visual heads' weights (float32 arrays named as in the heads' state dict)."""

    config: HeadConfig
    weights: dict[str, np.ndarray]

    def _project(self, side: str, tokens: np.ndarray) -> np.ndarray:
        w = self.weights
        x = np.asarray(tokens, dtype=np.float32)
        # Non-finite tokens (a damaged shard) give non-finite rows, which the search refuses with
        # its own one-line error; numpy's warnings about them would only print before it.
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            mean = x.mean(axis=-1, keepdims=True)
            centred = x - mean
            variance = (centred * centred).mean(axis=-1, keepdims=True)
            x = centred / np.sqrt(variance + LAYER_NORM_EPS) * w[f"{side}.norm.weight"] + w[f"{side}.norm.bias"]
            if self.config.head == "linear":
                x = x @ w[f"{side}.proj.weight"].T + w[f"{side}.proj.bias"]
            else:
                x = _gelu(x @ w[f"{side}.proj.0.weight"].T + w[f"{side}.proj.0.bias"])
                x = x @ w[f"{side}.proj.2.weight"].T + w[f"{side}.proj.2.bias"]
            return unit_rows(x)

    def _chunked(self, side: str, tokens: np.ndarray, chunk: int) -> np.ndarray:
        """``_project`` a chunk of the first axis at a time: an hour's tokens never make one
        (T, hidden) float64 block (as ``avfeat.index.vectors.project_audio`` chunks in torch)."""
        if len(tokens) <= chunk:
            return self._project(side, tokens)
        return np.concatenate([self._project(side, tokens[i : i + chunk]) for i in range(0, len(tokens), chunk)])

    def project_audio(self, tokens: np.ndarray, chunk: int = 16384) -> np.ndarray:
        """(T, D_a) audio tokens → (T, dim) float32 unit vectors."""
        return self._chunked("audio", tokens, chunk)

    def project_visual(self, tokens: np.ndarray, chunk: int = 64) -> np.ndarray:
        """(F, 1 + P, D_v) visual tokens → (F, 1 + P, dim) float32 unit vectors."""
        return self._chunked("visual", tokens, chunk)


def load_numpy_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint folder as ``load_checkpoint`` gives it, with ``NumpyHeads`` for heads.

    Raises:
        CheckpointError: as ``load_checkpoint``: missing, damaged, not finite, or not the config's shape.
    """
    folder = Path(path)
    data, config = read_heads_file(folder)
    weights = {name: array.astype(np.float32) for name, array in _finite_weights(data, folder / HEADS_FILE, "numpy").items()}
    heads = NumpyHeads(config.heads, weights)
    expected = _shapes(config.heads)
    got = {name: weights[name].shape for name in weights if name != "log_scale"}
    if got != expected:
        wrong = sorted(set(got.items()) ^ set(expected.items()))[0][0]
        raise CheckpointError(f"{folder / HEADS_FILE} does not match its config: weight {wrong} is missing or of another shape")
    return Checkpoint(heads=heads, config=config, fingerprint=fingerprint_bytes(data), path=folder)


def _shapes(config: HeadConfig) -> dict[str, tuple[int, ...]]:
    """The weights' names and shapes ``AVHeads(config)`` has (its temperature aside)."""
    shapes = {}
    for side, in_dim in (("audio", config.audio_dim), ("visual", config.visual_dim)):
        shapes[f"{side}.norm.weight"] = shapes[f"{side}.norm.bias"] = (in_dim,)
        if config.head == "linear":
            shapes[f"{side}.proj.weight"], shapes[f"{side}.proj.bias"] = (config.dim, in_dim), (config.dim,)
        else:
            hidden = max(config.dim, in_dim)
            shapes[f"{side}.proj.0.weight"], shapes[f"{side}.proj.0.bias"] = (hidden, in_dim), (hidden,)
            shapes[f"{side}.proj.2.weight"], shapes[f"{side}.proj.2.bias"] = (config.dim, hidden), (config.dim,)
    return shapes
