"""The ``random:<arch>`` architectures: real transformers architectures (HuBERT, DINOv2) built from
a config with seeded random weights, plus the processor each ships with. They exist for tests,
offline demos and throughput benchmarks; they have the same FLOPs as the real models but their
tokens mean nothing."""

from __future__ import annotations

from dataclasses import dataclass

from avfeat.core.errors import ModelError

RANDOM_PREFIX = "random:"
# Attribute written into the config of a random model so that a directory saved from it still
# says that its weights are random (``is_random`` stays true after a save/load round trip).
RANDOM_MARKER = "avfeat_random_spec"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
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
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
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
    setattr(config, RANDOM_MARKER, RANDOM_PREFIX + name)
    if weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = Model(config)
    else:
        with torch.device("meta"):
            model = Model(config)
    model.eval()
    return model, _make_processor(spec)
