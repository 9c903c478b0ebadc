"""The audio backbone: a frozen HuBERT-family speech encoder, its token geometry and windowed,
batched inference."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from avfeat.core.errors import ModelError
from avfeat.extract.models.devices import to_device
from avfeat.extract.models.frozen import FrozenBackbone
from avfeat.extract.models.loading import load_frozen

if TYPE_CHECKING:  # pragma: no cover
    import torch

class AudioBackbone(FrozenBackbone):
    """A frozen speech encoder (HuBERT family) producing tokens at ``token_rate`` Hz.

    Token ``t`` of a waveform covers samples ``[t * hop, t * hop + min_samples)``. Long audio is
    encoded in windows of ``window_seconds`` of output tokens with ``context_seconds`` of extra
    audio each side, starting at multiples of ``hop`` samples so that token indices line up; only
    each window's core tokens are kept. Only windows of identical length share a batch, because
    HuBERT-base's group norm runs over time and would see zero padding.
    """

    def __init__(
        self,
        spec: str,
        model,
        processor,
        *,
        layer: int = -1,
        device="cpu",
        dtype: str = "float32",
        is_random: bool = False,
        window_seconds: float = 30.0,
        context_seconds: float = 2.0,
    ):
        import torch

        super().__init__(spec, model, processor, layer=layer, device=device, dtype=dtype, is_random=is_random)
        config = model.config
        self.sample_rate = int(getattr(processor, "sampling_rate", 16000))
        self.do_normalize = bool(getattr(processor, "do_normalize", False))
        self.kernels = tuple(int(k) for k in config.conv_kernel)
        self.strides = tuple(int(s) for s in config.conv_stride)
        self.hop = int(np.prod(self.strides))
        self.token_rate = self.sample_rate / self.hop
        rf, jump = 1, 1
        for k, s in zip(self.kernels, self.strides):
            rf += (k - 1) * jump
            jump *= s
        self.min_samples = rf
        if window_seconds <= 0 or context_seconds < 0:
            raise ModelError("window_seconds must be > 0 and context_seconds >= 0")
        self.window_seconds = float(window_seconds)
        self.context_seconds = float(context_seconds)

    # -- geometry

    def num_tokens(self, n_samples: int) -> int:
        """Number of tokens the model outputs for ``n_samples`` samples (0 below ``min_samples``)."""
        n = int(n_samples)
        if n < self.min_samples:
            return 0
        for k, s in zip(self.kernels, self.strides):
            n = (n - k) // s + 1
        return max(n, 0)

    def config_summary(self) -> dict:
        """JSON-serialisable description used in the cache config and shard attributes."""
        return {
            "spec": self.spec,
            "layer": self.layer,
            "dim": self.dim,
            "is_random": self.is_random,
            "model_type": self.model_type,
            "num_layers": self.num_layers,
            "sample_rate": self.sample_rate,
            "token_rate": self.token_rate,
            "hop_samples": self.hop,
            "min_samples": self.min_samples,
            "do_normalize": self.do_normalize,
            "window_seconds": self.window_seconds,
            "context_seconds": self.context_seconds,
            "dtype": self.dtype,
        }

    def _plan(self, n: int) -> list[tuple[int, int, int, int]]:
        """Windows for ``n`` samples: (sample start, sample end, core token start, core token end)."""
        total = self.num_tokens(n)
        core = max(1, int(round(self.window_seconds * self.token_rate)))
        ctx = int(math.ceil(self.context_seconds * self.token_rate))
        if total <= core + 2 * ctx:  # one pass costs no more than one window
            return [(0, n, 0, total)]
        plan = []
        for c0 in range(0, total, core):
            c1 = min(total, c0 + core)
            a = max(0, c0 - ctx)
            b = min(total, c1 + ctx)
            start = a * self.hop
            end = n if b == total else (b - 1) * self.hop + self.min_samples
            plan.append((start, end, c0, c1))
        return plan

    # -- inference

    def _forward(self, x: "torch.Tensor") -> "torch.Tensor":
        if self.layer < 0:
            return self.model(x).last_hidden_state
        return self.model(x, output_hidden_states=True).hidden_states[self.layer]

    def _normalize(self, x: "torch.Tensor") -> "torch.Tensor":
        """Zero mean, unit variance over the whole waveform, like Wav2Vec2FeatureExtractor."""
        if not self.do_normalize:
            return x
        import torch

        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-7)

    def encode(self, waveforms: Sequence[np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
        """Tokens of each mono waveform (at ``sample_rate``).

        Returns:
            One float32 array ``(num_tokens(len(w)), dim)`` per waveform, in input order. A
            waveform shorter than ``min_samples`` gives ``(0, dim)``. Results do not depend on the
            other waveforms passed along.
        """
        import torch

        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        outputs: list[np.ndarray] = []
        groups: dict[int, list[tuple[int, int, int, int, "torch.Tensor"]]] = {}
        for i, wave in enumerate(waveforms):
            w = np.asarray(wave)
            if w.ndim != 1:
                raise ValueError(f"waveform {i} must be mono 1-D, got shape {w.shape}")
            total = self.num_tokens(w.shape[0])
            outputs.append(np.empty((total, self.dim), dtype=np.float32))
            if total == 0:
                continue
            x = self._normalize(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
            for start, end, c0, c1 in self._plan(w.shape[0]):
                keep0 = c0 - start // self.hop
                groups.setdefault(end - start, []).append((i, c0, c1, keep0, x[start:end]))
        with torch.inference_mode():
            for length in groups:
                items = groups[length]
                for b in range(0, len(items), batch_size):
                    chunk = items[b: b + batch_size]
                    batch = torch.stack([it[4] for it in chunk])
                    batch = to_device(batch, self.device).to(self.model.dtype)
                    hidden = self._forward(batch).float().cpu().numpy()
                    for row, (i, c0, c1, keep0, _) in enumerate(chunk):
                        outputs[i][c0:c1] = hidden[row, keep0: keep0 + (c1 - c0)]
        return outputs

    def __repr__(self) -> str:
        return f"AudioBackbone({self.spec!r}, layer={self.layer}, dim={self.dim}, device={self.device})"


def load_audio_backbone(
    spec: str,
    layer: int = -1,
    device: str = "cpu",
    dtype: str = "float32",
    *,
    window_seconds: float = 30.0,
    context_seconds: float = 2.0,
) -> AudioBackbone:
    """Load a frozen audio backbone from a hub id, a local directory or ``random:<arch>``.

    Args:
        spec: model spec (see ``avfeat.extract.models``).
        layer: -1 for the model's final output (``last_hidden_state``), ``k >= 0`` for
            ``hidden_states[k]`` (0 = the transformer's input embeddings). Layers after ``k`` are
            dropped, so they cost nothing.
        device: torch device string ("cpu", "cuda", "cuda:1").
        dtype: "float32", "float16", "bfloat16" (reduced precision is meant for GPUs), or "int8"
            (CPU only: float32 with its linears dynamically quantized, see :func:`quantize_int8`).
        window_seconds: core length of each window of output tokens for long audio.
        context_seconds: extra audio on each side of a window.

    Raises:
        ModelError: unknown spec, unreachable hub, wrong model family, bad layer/dtype/device.
    """
    model, processor, is_random, dev = load_frozen(spec, "audio", layer, device, dtype, "layers")
    return AudioBackbone(
        spec,
        model,
        processor,
        layer=layer,
        device=dev,
        dtype=dtype,
        is_random=is_random,
        window_seconds=window_seconds,
        context_seconds=context_seconds,
    )
