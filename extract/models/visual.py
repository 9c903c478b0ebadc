"""The visual backbone: a frozen DINOv2-family image encoder, the frame geometry its processor
asks for, and batched CLS + patch token inference."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from avfeat.core.errors import ModelError
from avfeat.extract.models.archs import IMAGENET_MEAN, IMAGENET_STD
from avfeat.extract.models.devices import to_device
from avfeat.extract.models.frozen import FrozenBackbone
from avfeat.extract.models.loading import load_frozen

if TYPE_CHECKING:  # pragma: no cover
    import torch

def _pair(value) -> tuple[int, int] | None:
    if value is None:
        return None
    h, w = _get(value, "height"), _get(value, "width")
    if h is None or w is None:
        return None
    return int(h), int(w)


def _get(obj, key: str, default=None):
    """Read ``key`` from a processor field that may be a dict or a SizeDict-like object."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    value = getattr(obj, key, default)
    return default if value is None else value


class VisualBackbone(FrozenBackbone):
    """A frozen image encoder (DINOv2 family) producing CLS + patch tokens per frame.

    Frames arrive already scaled and cropped to :meth:`decode_spec_geometry` (the decoder does it
    with libswscale); this class only rescales, normalises and runs the model, batched on device.
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
    ):
        import torch

        super().__init__(spec, model, processor, layer=layer, device=device, dtype=dtype, is_random=is_random)
        config = model.config
        ps = config.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        self.num_register_tokens = int(getattr(config, "num_register_tokens", 0) or 0)

        p = processor
        self.do_rescale = bool(getattr(p, "do_rescale", True))
        self.rescale_factor = float(getattr(p, "rescale_factor", 1 / 255))
        self.do_normalize = bool(getattr(p, "do_normalize", True))
        mean = getattr(p, "image_mean", None) or IMAGENET_MEAN
        std = getattr(p, "image_std", None) or IMAGENET_STD
        self.image_mean = [float(v) for v in (mean if isinstance(mean, (list, tuple)) else [mean] * 3)]
        self.image_std = [float(v) for v in (std if isinstance(std, (list, tuple)) else [std] * 3)]

        shortest_edge = size = crop = None
        if getattr(p, "do_resize", True):
            se = _get(getattr(p, "size", None), "shortest_edge")
            if se is not None:
                shortest_edge = int(se)
            else:
                size = _pair(getattr(p, "size", None))
        if getattr(p, "do_center_crop", False):
            crop = _pair(getattr(p, "crop_size", None))
            if crop is None:
                raise ModelError(f"image processor of {spec!r} centre-crops but gives no crop_size")
        self._geometry = {"shortest_edge": shortest_edge, "size": size, "crop": crop}
        self.input_size = crop or size  # (h, w) of the frames encode() expects, when fixed
        if self.input_size is not None:
            self.grid: tuple[int, int] | None = (
                self.input_size[0] // self.patch_size,
                self.input_size[1] // self.patch_size,
            )
            self.num_patches: int | None = self.grid[0] * self.grid[1]
        else:
            self.grid = None
            self.num_patches = None

        scale = self.rescale_factor if self.do_rescale else 1.0
        m = np.array(self.image_mean if self.do_normalize else [0.0] * 3, dtype=np.float32)
        s = np.array(self.image_std if self.do_normalize else [1.0] * 3, dtype=np.float32)
        # x_norm = (x * scale - mean) / std = x * a + b, computed in float32 on device
        self._a = torch.from_numpy(scale / s).view(1, 3, 1, 1).to(self.device)
        self._b = torch.from_numpy(-m / s).view(1, 3, 1, 1).to(self.device)

    def decode_spec_geometry(self) -> dict:
        """Geometry for :class:`avfeat.extract.media.DecodeSpec`: shortest_edge, size, crop."""
        return dict(self._geometry)

    def config_summary(self) -> dict:
        """JSON-serialisable description used in the cache config and shard attributes."""
        g = self._geometry
        return {
            "spec": self.spec,
            "layer": self.layer,
            "dim": self.dim,
            "is_random": self.is_random,
            "model_type": self.model_type,
            "num_layers": self.num_layers,
            "patch_size": self.patch_size,
            "grid": list(self.grid) if self.grid else None,
            "num_patches": self.num_patches,
            "num_register_tokens": self.num_register_tokens,
            "shortest_edge": g["shortest_edge"],
            "size": list(g["size"]) if g["size"] else None,
            "crop": list(g["crop"]) if g["crop"] else None,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
            "rescale_factor": self.rescale_factor if self.do_rescale else None,
            "dtype": self.dtype,
        }

    def _forward(self, x: "torch.Tensor") -> "torch.Tensor":
        if self.layer < 0:
            h = self.model(pixel_values=x).last_hidden_state
        else:
            h = self.model(pixel_values=x, output_hidden_states=True).hidden_states[self.layer]
        if self.num_register_tokens:
            import torch

            h = torch.cat([h[:, :1], h[:, 1 + self.num_register_tokens:]], dim=1)
        return h

    def encode(self, frames: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """CLS + patch tokens of uint8 RGB frames ``(N, H, W, 3)`` already at the input geometry.

        Returns:
            float32 ``(N, 1 + num_patches, dim)``; register tokens, if any, are dropped.
        """
        import torch

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
        if self.input_size is not None and tuple(frames.shape[1:3]) != self.input_size:
            raise ValueError(
                f"frames are {frames.shape[1]}x{frames.shape[2]} but {self.spec!r} expects "
                f"{self.input_size[0]}x{self.input_size[1]} (decode with decode_spec_geometry())"
            )
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        n = frames.shape[0]
        tokens = 1 + (frames.shape[1] // self.patch_size) * (frames.shape[2] // self.patch_size)
        out = np.empty((n, tokens, self.dim), dtype=np.float32)
        with torch.inference_mode():
            for b in range(0, n, batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(frames[b: b + batch_size]))
                x = to_device(chunk, self.device).permute(0, 3, 1, 2).float()
                x = (x * self._a + self._b).to(self.model.dtype).contiguous()
                out[b: b + chunk.shape[0]] = self._forward(x).float().cpu().numpy()
        return out

    def __repr__(self) -> str:
        return f"VisualBackbone({self.spec!r}, layer={self.layer}, dim={self.dim}, device={self.device})"


def load_visual_backbone(
    spec: str, layer: int = -1, device: str = "cpu", dtype: str = "float32"
) -> VisualBackbone:
    """Load a frozen visual backbone from a hub id, a local directory or ``random:<arch>``.

    Args:
        spec: model spec (see ``avfeat.extract.models``).
        layer: -1 for ``last_hidden_state`` (after DINOv2's final layer norm), ``k >= 0`` for
            ``hidden_states[k]`` (0 = patch embeddings + position). Later layers are dropped.
        device: torch device string.
        dtype: "float32", "float16", "bfloat16" or "int8" (CPU only, see :func:`quantize_int8`).

    Raises:
        ModelError: unknown spec, unreachable hub, wrong model family, bad layer/dtype/device.
    """
    model, processor, is_random, dev = load_frozen(spec, "visual", layer, device, dtype, "layer")
    return VisualBackbone(spec, model, processor, layer=layer, device=dev, dtype=dtype, is_random=is_random)
