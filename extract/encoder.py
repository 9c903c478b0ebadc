"""The encoder: the frozen backbones and their preprocessing, from decoded media to the tokens
the cache holds.

One :class:`Encoder` serves the local extraction job, the Ray stages (one backbone each) and
queries (search, sync), so a query's tokens are the ones ``extract`` would have cached for it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avfeat.data.configs import POOL_FACTORS
from avfeat.data.codecs import STORAGES
from avfeat.extract.media import DecodedMedia, DecodeSpec, decode

log = logging.getLogger(__name__)


@dataclass
class ExtractConfig:
    """Settings that determine the cache's contents (stored in cache.json)."""

    audio_model: str = "facebook/hubert-base-ls960"
    visual_model: str = "facebook/dinov2-small"
    audio_layer: int = -1
    visual_layer: int = -1
    # Two frames a second: at 1 fps ten frames of a 10 s video bound an offset only to the gaps
    # between their instants and the sound's onsets. With no options on the 80-video synthetic
    # corpus (seeds 0 and 1), sync within 0.2 s was 0.40 / 0.60 at 1 fps and 0.95 / 0.90 at 2 fps,
    # held-out class R@1 0.87-0.97 and 0.93-1.00. It doubles the visual model's work and
    # storage (0.99 → 1.70 GB per media-hour with the default models); `--fps 1` halves them.
    fps: float = 2.0
    storage_dtype: str = "float16"  # the float dtype readers get (and float16 storage writes)
    storage: str = "float16"  # how shards hold tokens: float16, or int8 with per-token float32 scales
    pool_patches: int = 1  # 2: each 2x2 block of patches averaged right after the backbone (CLS kept)
    decode_mode: str = "exact"  # keyframes: each 1/fps step takes the last keyframe at or before it (extract/media/frames.py)


class Encoder:
    """Both backbones loaded once on one device, with the decode settings they imply."""

    def __init__(self, config: ExtractConfig, device: str = "auto", dtype: str = "auto", batch_size: int = 32):
        from avfeat.core.devices import resolve_device
        from avfeat.extract.models import load_audio_backbone, load_visual_backbone

        self.config, self.batch_size = config, batch_size
        self.device = "meta" if device == "meta" else str(resolve_device(device))
        self.dtype = resolve_dtype(dtype, self.device)
        log.info("backbones on %s in %s (asked: --device %s, --dtype %s)", self.device, self.dtype, device, dtype)
        self.audio = load_audio_backbone(config.audio_model, config.audio_layer, device=self.device, dtype=self.dtype)
        self.visual = load_visual_backbone(config.visual_model, config.visual_layer, device=self.device, dtype=self.dtype)
        self.spec = DecodeSpec(sample_rate=self.audio.sample_rate, fps=config.fps, mode=config.decode_mode, **self.visual.decode_spec_geometry())
        if config.storage not in STORAGES:
            from avfeat.core.errors import InputError

            raise InputError(f"unknown --storage {config.storage!r} ({', '.join(STORAGES)})")
        self.set_pool(config.pool_patches)

    def set_pool(self, factor: int) -> None:
        """Pool patches ``factor``×``factor`` after the backbone from now on (``config.pool_patches``
        and the cached grid follow). A grid that does not divide is one :class:`InputError` line."""
        self.pool = check_pool(self.visual, factor)
        self.config.pool_patches = self.pool
        self.grid = tuple(self.visual.grid) if self.visual.grid else None
        if self.grid and self.pool > 1:
            self.grid = (self.grid[0] // self.pool, self.grid[1] // self.pool)

    @classmethod
    def describe(cls, config: ExtractConfig) -> "Encoder":
        """An encoder that only describes the tensors (shapes, rates, decode geometry, cache
        config): the models are built from their configs on the ``meta`` device, no weights are
        read. A Ray driver needs no more; its actors load the real models."""
        return cls(config, device="meta", dtype="float32")

    @property
    def is_random(self) -> bool:
        return bool(self.audio.is_random or self.visual.is_random)

    def cache_config(self) -> dict[str, Any]:
        """What cache.json records (a :class:`~avfeat.data.records.BackboneSpec`): the config
        plus what the models imply about the tensors."""
        from avfeat.data.records import BackboneSpec

        return BackboneSpec(
            **asdict(self.config),
            sample_rate=self.audio.sample_rate,
            audio_token_rate=self.audio.token_rate,
            audio_dim=self.audio.dim,
            visual_dim=self.visual.dim,
            visual_tokens=self.visual_tokens,
            visual_grid=self.grid,
            frame_geometry={k: list(v) if isinstance(v, tuple) else v for k, v in self.visual.decode_spec_geometry().items()},
        ).to_dict()

    def shard_attrs(self, device: str | None = None, dtype: str | None = None) -> dict[str, Any]:
        """Shard attributes: the cache config plus how the tokens were computed (by default on
        this encoder; a distributed run passes its workers' device and dtype)."""
        return {**self.cache_config(), "random_models": self.is_random, "compute_device": device or self.device, "compute_dtype": dtype or self.dtype}

    @property
    def visual_tokens(self) -> int:
        """Tokens per frame as cached: CLS + the (pooled) patches."""
        return 1 + self.grid[0] * self.grid[1]

    def writer_dims(self) -> dict[str, Any]:
        """The tensor shapes and storage type a :class:`~avfeat.data.shards.ShardWriter` needs."""
        return dict(audio_dim=self.audio.dim, visual_tokens_per_frame=self.visual_tokens,
                    visual_dim=self.visual.dim, dtype=self.config.storage_dtype, storage=self.config.storage)

    def encode(self, medias: list[DecodedMedia]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Both backbones over a group of decoded videos: (audio (T, D_a), visual (F, 1 + P, D_v)) each."""
        visual = encode_visual_group(self.visual, medias, self.batch_size, pool=self.pool)
        audio = encode_audio_group(self.audio, medias, self.batch_size)
        return list(zip(audio, visual))

    def encode_file(self, path: str | Path) -> tuple[DecodedMedia, np.ndarray, np.ndarray]:
        """Decode one file and run both backbones: (media, audio tokens (T, D_a), visual tokens
        (F, 1 + P, D_v)), the same tensors `extract` would cache. Raises MediaError."""
        media = decode(path, self.spec)
        ((audio, visual),) = self.encode([media])
        return media, audio, visual

    def encode_audio_file(self, path: str | Path) -> tuple[np.ndarray, float]:
        """Only the sound of a file (an audio-only query: wav, flac, mp3, ...) through the audio
        backbone: (tokens (T, D_a), time of the first sample). Raises MediaError."""
        from avfeat.extract.media import decode_audio

        waveform, start = decode_audio(path, self.audio.sample_rate)
        (tokens,) = self.audio.encode([waveform], batch_size=1)
        return tokens, start

    def encode_image(self, path: str | Path) -> np.ndarray:
        """An image file as one frame through the visual backbone: (1, 1 + P, D_v). Raises MediaError."""
        from avfeat.extract.media import load_image

        return pool_patch_tokens(self.visual.encode(load_image(path, self.spec)[None], batch_size=1), self.visual.grid, self.pool)


def resolve_dtype(dtype: str, device: str) -> str:
    """The compute dtype a run uses. ``auto``: bfloat16 on GPUs and on CPUs with native
    bfloat16 matmul (AVX512-BF16/AMX), where it is 1.3-2.5x faster than float32 and tokens keep
    cosine > 0.9999; int8 (dynamically quantized linears) on other x86 CPUs with AVX2, where it
    is 1.5-1.8x faster than float32 on frames and 1.1-1.3x on audio, with token cosine > 0.998
    (benchmarks/cpu_inference.py, README "CPU without bfloat16");
    float32 elsewhere (other CPUs: not measured).

    Raises:
        InputError: int8 asked for on a GPU (its kernels are CPU kernels), as one line.
    """
    if dtype == "int8" and device.split(":")[0] not in ("cpu", "meta"):
        from avfeat.core.errors import InputError

        raise InputError(f"--dtype int8 runs on the CPU only, not on {device}: use --device cpu, or --dtype bfloat16 on a GPU")
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16"
    import torch

    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bfloat16"
    return "int8" if device.startswith("cpu") and cpu_int8_wins() else "float32"


def cpu_int8_wins() -> bool:
    """True where the measured int8 win holds: an x86 torch with its fbgemm int8 engine on a CPU
    whose kernels are at least AVX2 (ATen's dispatch level, which ATEN_CPU_CAPABILITY can lower)."""
    import torch

    return bool(_quantized_engines() & {"x86", "fbgemm"}) and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def _quantized_engines() -> set[str]:
    import torch

    return set(torch.backends.quantized.supported_engines)


def check_pool(backbone, factor: int) -> int:
    """``factor`` when the backbone's patch grid can be pooled by it; one line otherwise."""
    from avfeat.core.errors import InputError

    factor = int(factor)
    if factor not in POOL_FACTORS:
        raise InputError(f"--pool-patches {factor} is not supported (choose {' or '.join(map(str, POOL_FACTORS))})")
    if factor == 1:
        return factor
    grid = backbone.grid
    if not grid:
        raise InputError(f"--pool-patches {factor} needs a fixed patch grid, and {backbone.spec!r} has none (no crop or fixed size)")
    if grid[0] % factor or grid[1] % factor:
        raise InputError(f"--pool-patches {factor} needs a patch grid whose sides divide by {factor}; {backbone.spec!r} gives {grid[0]}x{grid[1]}")
    return factor


def pool_patch_tokens(tokens: np.ndarray, grid, factor: int) -> np.ndarray:
    """(N, 1 + P, D) → (N, 1 + P / factor², D): each factor×factor block of the row-major
    ``grid`` of patches averaged (in float32), the CLS token kept first. Done right after the
    backbone, so caches, Ray stages and queries hold the same pooled tokens."""
    if factor == 1:
        return tokens
    from avfeat.core.errors import InputError

    gh, gw = int(grid[0]), int(grid[1])
    if gh % factor or gw % factor:
        raise InputError(f"--pool-patches {factor} needs a patch grid whose sides divide by {factor}; this one is {gh}x{gw}")
    n, count, dim = tokens.shape
    if count != 1 + gh * gw:
        raise ValueError(f"{count} tokens per frame do not make CLS + a {gh}x{gw} patch grid")
    patches = np.asarray(tokens[:, 1:], dtype=np.float32).reshape(n, gh // factor, factor, gw // factor, factor, dim)
    pooled = patches.mean(axis=(2, 4), dtype=np.float32).reshape(n, -1, dim)
    return np.concatenate([np.asarray(tokens[:, :1], dtype=np.float32), pooled], axis=1)


def encode_visual_group(backbone, medias: list[DecodedMedia], batch_size: int, pool: int = 1) -> list[np.ndarray]:
    """Each video's (F, 1 + P, D_v) tokens, its frames batched with the group's (patches pooled
    ``pool``×``pool`` when asked, see :func:`pool_patch_tokens`)."""
    visual = backbone.encode(np.concatenate([media.frames for media in medias]), batch_size=batch_size)
    visual = pool_patch_tokens(visual, backbone.grid, pool)
    bounds = np.cumsum([0] + [len(media.frames) for media in medias])
    return [visual[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


def encode_audio_group(backbone, medias: list[DecodedMedia], batch_size: int) -> list[np.ndarray]:
    """Each video's (T, D_a) tokens; audio windows are batched a quarter as many as frames."""
    return backbone.encode([media.audio for media in medias], batch_size=max(1, batch_size // 4))
