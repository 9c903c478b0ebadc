"""Frozen backbones: HuBERT-style audio encoders and DINOv2-style visual encoders.

A model spec is one of:

- a Hugging Face hub id (``facebook/hubert-base-ls960``, ``facebook/dinov2-small``);
- a local directory written by ``save_pretrained`` (the model plus its feature-extractor /
  image-processor config);
- ``random:<arch>``: the real transformers architecture built from a config with seeded random
  weights (see :data:`RANDOM_ARCHS`). These exist for tests, offline demos and throughput
  benchmarks; they have the same FLOPs as the real models but their tokens mean nothing.

Preprocessing follows the model's own processor config (sampling rate, waveform normalisation,
rescale factor, image mean and std, resize and crop geometry) but runs as batched tensor code on
the model's device instead of through the per-example numpy/PIL processors; the tests hold it
against the reference transformers processors.

Heavy imports (torch, transformers) happen inside functions, so importing this module is cheap.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from avfeat.core.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import torch

RANDOM_PREFIX = "random:"

# Attribute written into the config of a random model so that a directory saved from it still
# says that its weights are random (``is_random`` stays true after a save/load round trip).
_RANDOM_MARKER = "avfeat_random_spec"

_DTYPES = ("float32", "float16", "bfloat16", "int8")

_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]
_HUBERT_KERNELS = (10, 3, 3, 3, 3, 2, 2)
_HUBERT_STRIDES = (5, 2, 2, 2, 2, 2, 2)


@dataclass(frozen=True)
class RandomArch:
    """One ``random:`` architecture: the model config plus the processor settings it ships with."""

    family: str  # "audio" or "visual"
    config: dict
    processor: dict
    note: str


# The random architectures. Audio configs are HubertConfig keyword arguments, visual ones
# Dinov2Config keyword arguments; ``processor`` holds the matching processor's settings.
RANDOM_ARCHS: dict[str, RandomArch] = {
    # facebook/hubert-base-ls960: HubertConfig defaults (group norm in the first conv block,
    # post-norm transformer). Trained by fairseq on raw, un-normalised waveforms.
    "hubert-base": RandomArch(
        family="audio",
        config={},
        processor={"do_normalize": False, "return_attention_mask": False},
        note="768 dims, 12 layers, 12 heads, 50 Hz",
    ),
    # facebook/hubert-large-ll60k: layer norm feature extractor, stable (pre-norm) layer norm;
    # trained on zero-mean unit-variance waveforms.
    "hubert-large": RandomArch(
        family="audio",
        config={
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "feat_extract_norm": "layer",
            "do_stable_layer_norm": True,
            "conv_bias": True,
        },
        processor={"do_normalize": True, "return_attention_mask": True},
        note="1024 dims, 24 layers, 16 heads, 50 Hz",
    ),
    # For tests: real conv kernels and strides (50 Hz, 400-sample receptive field), tiny widths.
    "hubert-tiny": RandomArch(
        family="audio",
        config={
            "conv_dim": (32,) * 7,
            "conv_kernel": _HUBERT_KERNELS,
            "conv_stride": _HUBERT_STRIDES,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        processor={"do_normalize": False, "return_attention_mask": False},
        note="32 dims, 2 layers, 2 heads, 50 Hz (tests)",
    ),
    "dinov2-small": RandomArch(
        family="visual",
        config={"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "image_size": 518},
        processor={"shortest_edge": 256, "crop": 224},
        note="384 dims, 12 layers, 6 heads, 224 crop, 16x16 patches",
    ),
    "dinov2-base": RandomArch(
        family="visual",
        config={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "image_size": 518},
        processor={"shortest_edge": 256, "crop": 224},
        note="768 dims, 12 layers, 12 heads, 224 crop, 16x16 patches",
    ),
    "dinov2-large": RandomArch(
        family="visual",
        config={"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 518},
        processor={"shortest_edge": 256, "crop": 224},
        note="1024 dims, 24 layers, 16 heads, 224 crop, 16x16 patches",
    ),
    "dinov2-tiny": RandomArch(
        family="visual",
        config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 112},
        processor={"shortest_edge": 128, "crop": 112},
        note="32 dims, 2 layers, 2 heads, 112 crop, 8x8 patches (tests)",
    ),
    # The defaults' patch grid at tiny widths: benchmarks of what a grid change (patch pooling)
    # costs need DINOv2-small's 16x16 patches, not the 8x8 of dinov2-tiny.
    "dinov2-tiny-224": RandomArch(
        family="visual",
        config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 224},
        processor={"shortest_edge": 256, "crop": 224},
        note="32 dims, 2 layers, 2 heads, 224 crop, 16x16 patches (benchmarks)",
    ),
}


def known_archs(family: str | None = None) -> list[str]:
    """Names accepted after ``random:`` (optionally only those of one family)."""
    return [name for name, a in RANDOM_ARCHS.items() if family is None or a.family == family]


# --------------------------------------------------------------------------------------------
# building and loading


def _make_processor(arch: RandomArch):
    if arch.family == "audio":
        from transformers import Wav2Vec2FeatureExtractor

        return Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=16000,
            padding_value=0.0,
            do_normalize=arch.processor["do_normalize"],
            return_attention_mask=arch.processor["return_attention_mask"],
        )
    try:  # transformers >= 5 without torchvision: the PIL backend, same settings, no warning
        from transformers import BitImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import BitImageProcessor as ImageProcessor
    crop = arch.processor["crop"]
    return ImageProcessor(
        do_resize=True,
        size={"shortest_edge": arch.processor["shortest_edge"]},
        resample=3,  # PIL bicubic, as DINOv2's processor config says
        do_center_crop=True,
        crop_size={"height": crop, "width": crop},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(_IMAGENET_MEAN),
        image_std=list(_IMAGENET_STD),
        do_convert_rgb=True,
    )


def build_random(arch: str, weights: bool = True):
    """Build ``random:<arch>``: the real architecture with seeded random weights and its processor.

    The weights come from ``torch.manual_seed(0)`` right before construction (in a forked RNG
    state, so callers' random streams are untouched), hence two builds are identical. Save both
    returned objects with ``save_pretrained`` into one directory to get a local spec that loads to
    the same tokens.

    Returns:
        ``(model, processor)``: a ``HubertModel`` + ``Wav2Vec2FeatureExtractor`` or a
        ``Dinov2Model`` + DINOv2's ``BitImageProcessor``. The model is in eval mode, float32, CPU
        (on the ``meta`` device, shapes without weights, when ``weights`` is false).

    Raises:
        ModelError: ``arch`` is not a known random architecture.
    """
    import torch

    name = arch[len(RANDOM_PREFIX):] if arch.startswith(RANDOM_PREFIX) else arch
    spec = RANDOM_ARCHS.get(name)
    if spec is None:
        raise ModelError(
            f"unknown random architecture {name!r}; known: " + ", ".join(RANDOM_PREFIX + a for a in RANDOM_ARCHS)
        )
    if spec.family == "audio":
        from transformers import HubertConfig as Config
        from transformers import HubertModel as Model
    else:
        from transformers import Dinov2Config as Config
        from transformers import Dinov2Model as Model
    config = Config(**spec.config)
    setattr(config, _RANDOM_MARKER, RANDOM_PREFIX + name)
    if weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = Model(config)
    else:
        with torch.device("meta"):
            model = Model(config)
    model.eval()
    return model, _make_processor(spec)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0].strip()
    return line[:300]


def _offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", "./", "../", "~", "."))
        or spec.count("/") > 1
        or "\\" in spec
        or os.path.exists(os.path.expanduser(spec))
    )


def _family_of_config(config) -> str | None:
    if hasattr(config, "conv_stride") and hasattr(config, "conv_kernel"):
        return "audio"
    if hasattr(config, "patch_size") and getattr(config, "model_type", "").startswith(("dinov2", "vit")):
        return "visual"
    return None


def _torch_dtype(dtype: str):
    import torch

    if dtype not in _DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return torch.float32 if dtype == "int8" else getattr(torch, dtype)  # int8: loaded in float32, then quantized


def _check_int8_device(dtype: str, dev) -> None:
    if dtype == "int8" and dev.type not in ("cpu", "meta"):
        raise ModelError(f"dtype int8 runs on the CPU only, not on {dev} (use --device cpu, or bfloat16 on a GPU)")


def quantize_int8(model, device) -> Any:
    """``model`` with every ``nn.Linear`` replaced by a dynamically quantized int8 linear
    (weights int8 per output channel, activations quantized per batch at run time, accumulation
    in int32; convolutions, norms and attention stay float32). CPU only: the int8 kernels are
    fbgemm/oneDNN CPU kernels.

    Why: on CPUs without native bfloat16 the backbones' float32 matmuls are the whole cost of
    extraction, and the linears hold most of those FLOPs (benchmarks/cpu_inference.py).

    ``torch.ao.quantization.quantize_dynamic`` is the eager int8 dynamic-linear path torch 2.13
    ships; it warns that it is deprecated in favour of torchao's ``quantize_`` (a separate
    package, whose CPU int8 path needs ``torch.compile`` to be fast), so the warning is silenced
    here and this one function is the place to switch.
    """
    import warnings

    import torch

    _check_int8_device("int8", torch.device(device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        per_channel = torch.ao.quantization.per_channel_dynamic_qconfig
        return quantize_dynamic(model, {torch.nn.Linear: per_channel}, dtype=torch.qint8, inplace=True)


def _torch_device(device: str):
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"unknown device {device!r}: {_one_line(exc)}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    return dev


def _load(spec: str, family: str, torch_dtype, weights: bool = True):
    """Resolve ``spec`` to ``(model, processor, is_random)``; every failure is a ModelError.
    Without ``weights`` the model is built from its config on the ``meta`` device: its shapes,
    rates and preprocessing, for a process that only describes the tensors (a Ray driver)."""
    what = f"{family} model {spec!r}"
    if spec.startswith(RANDOM_PREFIX):
        name = spec[len(RANDOM_PREFIX):]
        arch = RANDOM_ARCHS.get(name)
        if arch is None:
            raise ModelError(
                f"cannot load {what}: unknown random architecture; known {family} ones: "
                + ", ".join(RANDOM_PREFIX + a for a in known_archs(family))
            )
        if arch.family != family:
            raise ModelError(
                f"cannot load {what}: it is a {arch.family} architecture; {family} ones: "
                + ", ".join(RANDOM_PREFIX + a for a in known_archs(family))
            )
        model, processor = build_random(name, weights=weights)
        return model, processor, True

    from transformers import AutoConfig, AutoFeatureExtractor, AutoImageProcessor, AutoModel

    local = os.path.isdir(os.path.expanduser(spec))
    path = os.path.expanduser(spec) if local else spec
    if not local and _looks_like_path(spec):
        if os.path.exists(os.path.expanduser(spec)):
            raise ModelError(f"cannot load {what}: it is a file, not a directory saved with save_pretrained")
        raise ModelError(f"cannot load {what}: no such local directory")
    offline = _offline()
    kwargs: dict[str, Any] = {"local_files_only": True} if offline else {}

    def fail(exc: BaseException, part: str) -> ModelError:
        if local:
            return ModelError(f"cannot load {what}: {part} in that directory: {_one_line(exc)}")
        if offline:
            return ModelError(
                f"cannot load {what}: not a local directory, HF_HUB_OFFLINE is set and the local "
                f"hub cache has no copy ({part}: {_one_line(exc)})"
            )
        return ModelError(
            f"cannot load {what}: not a local directory and the hub is unreachable (offline?) "
            f"or has no such model ({part}: {_one_line(exc)})"
        )

    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure is reported as one line
        raise fail(exc, "config") from None
    found = _family_of_config(config)
    if found != family:
        kind = f"a {found} model" if found else f"an unsupported model type ({config.model_type!r})"
        article = "an" if family == "audio" else "a"
        raise ModelError(f"cannot load {what}: it is {kind}, not {article} {family} model")
    try:
        processor_cls = AutoFeatureExtractor if family == "audio" else AutoImageProcessor
        processor = processor_cls.from_pretrained(path, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise fail(exc, "processor config") from None
    if not weights:
        import torch

        with torch.device("meta"):
            model = AutoModel.from_config(config)
        return model.eval(), processor, bool(getattr(config, _RANDOM_MARKER, None))
    try:
        try:
            model = AutoModel.from_pretrained(path, dtype=torch_dtype, attn_implementation="sdpa", **kwargs)
        except (ValueError, ImportError) as exc:
            if "sdpa" not in str(exc).lower() and "attn" not in str(exc).lower():
                raise
            model = AutoModel.from_pretrained(path, dtype=torch_dtype, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise fail(exc, "weights") from None
    model.eval()
    is_random = bool(getattr(model.config, _RANDOM_MARKER, None))
    return model, processor, is_random


def _check_layer(layer: int, num_layers: int, spec: str) -> None:
    if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool):
        raise ModelError(f"layer must be an integer, got {layer!r}")
    if layer == -1 or 0 <= layer <= num_layers:
        return
    raise ModelError(
        f"layer {layer} out of range for {spec!r}: use -1 (final output) or 0..{num_layers} "
        f"(0 = embeddings, k = output of transformer layer k)"
    )


def _truncate_layers(layers_owner, attr: str, layer: int, num_layers: int) -> None:
    """Drop transformer layers after ``layer``: they never influence ``hidden_states[layer]``.

    At least one layer is kept because transformers records ``hidden_states`` through hooks on
    the layer modules (``hidden_states[0]`` is the first layer's input).
    """
    if layer < 0 or layer >= num_layers:
        return
    import torch

    layers = getattr(layers_owner, attr)
    setattr(layers_owner, attr, torch.nn.ModuleList(list(layers)[: max(layer, 1)]))


def _to_device(t: "torch.Tensor", device) -> "torch.Tensor":
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _get(obj, key: str, default=None):
    """Read ``key`` from a processor field that may be a dict or a SizeDict-like object."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    value = getattr(obj, key, default)
    return default if value is None else value


# --------------------------------------------------------------------------------------------
# audio


class AudioBackbone:
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

        self.spec = spec
        self.layer = int(layer)
        self.is_random = bool(is_random)
        self.dtype = dtype
        self.device = torch.device(device)
        self.model = model
        self.processor = processor
        config = model.config
        self.model_type = str(config.model_type)
        self.num_layers = int(config.num_hidden_layers)
        self.dim = int(config.hidden_size)
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
                    batch = _to_device(batch, self.device).to(self.model.dtype)
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
        spec: model spec (see the module docstring).
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
    torch_dtype = _torch_dtype(dtype)
    dev = _torch_device(device)
    _check_int8_device(dtype, dev)  # before minutes of loading
    model, processor, is_random = _load(spec, "audio", torch_dtype, weights=dev.type != "meta")
    num_layers = int(model.config.num_hidden_layers)
    _check_layer(layer, num_layers, spec)
    _truncate_layers(model.encoder, "layers", layer, num_layers)
    if dtype == "int8" and dev.type != "meta":
        model = quantize_int8(model.to(device=dev, dtype=torch_dtype), dev)
    model.to(device=dev, dtype=torch_dtype)
    model.requires_grad_(False)
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


# --------------------------------------------------------------------------------------------
# visual


def _pair(value) -> tuple[int, int] | None:
    if value is None:
        return None
    h, w = _get(value, "height"), _get(value, "width")
    if h is None or w is None:
        return None
    return int(h), int(w)


class VisualBackbone:
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

        self.spec = spec
        self.layer = int(layer)
        self.is_random = bool(is_random)
        self.dtype = dtype
        self.device = torch.device(device)
        self.model = model
        self.processor = processor
        config = model.config
        self.model_type = str(config.model_type)
        self.num_layers = int(config.num_hidden_layers)
        self.dim = int(config.hidden_size)
        ps = config.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        self.num_register_tokens = int(getattr(config, "num_register_tokens", 0) or 0)

        p = processor
        self.do_rescale = bool(getattr(p, "do_rescale", True))
        self.rescale_factor = float(getattr(p, "rescale_factor", 1 / 255))
        self.do_normalize = bool(getattr(p, "do_normalize", True))
        mean = getattr(p, "image_mean", None) or _IMAGENET_MEAN
        std = getattr(p, "image_std", None) or _IMAGENET_STD
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
                x = _to_device(chunk, self.device).permute(0, 3, 1, 2).float()
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
        spec: model spec (see the module docstring).
        layer: -1 for ``last_hidden_state`` (after DINOv2's final layer norm), ``k >= 0`` for
            ``hidden_states[k]`` (0 = patch embeddings + position). Later layers are dropped.
        device: torch device string.
        dtype: "float32", "float16", "bfloat16" or "int8" (CPU only, see :func:`quantize_int8`).

    Raises:
        ModelError: unknown spec, unreachable hub, wrong model family, bad layer/dtype/device.
    """
    torch_dtype = _torch_dtype(dtype)
    dev = _torch_device(device)
    _check_int8_device(dtype, dev)  # before minutes of loading
    model, processor, is_random = _load(spec, "visual", torch_dtype, weights=dev.type != "meta")
    num_layers = int(model.config.num_hidden_layers)
    _check_layer(layer, num_layers, spec)
    _truncate_layers(model.encoder, "layer", layer, num_layers)
    if dtype == "int8" and dev.type != "meta":
        model = quantize_int8(model.to(device=dev, dtype=torch_dtype), dev)
    model.to(device=dev, dtype=torch_dtype)
    model.requires_grad_(False)
    return VisualBackbone(spec, model, processor, layer=layer, device=dev, dtype=dtype, is_random=is_random)
