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

Heavy imports (torch, transformers) happen inside functions, so importing this package is cheap.

Modules: ``archs`` (the ``random:`` architectures), ``devices`` (dtype, device, int8), ``loading``
(hub / local / random, offline), ``audio`` and ``visual`` (the backbones). This package's
namespace is their public API.
"""
from avfeat.extract.models.archs import RANDOM_ARCHS, RANDOM_PREFIX, RandomArch, build_random, known_archs
from avfeat.extract.models.audio import AudioBackbone, load_audio_backbone
from avfeat.extract.models.devices import quantize_int8
from avfeat.extract.models.visual import VisualBackbone, load_visual_backbone

__all__ = [
    "RANDOM_ARCHS", "RANDOM_PREFIX", "AudioBackbone", "RandomArch", "VisualBackbone", "build_random", "known_archs",
    "load_audio_backbone", "load_visual_backbone", "quantize_int8",
]
