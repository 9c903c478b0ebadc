"""The typed configs stages meet through: a cache's ``cache.json`` (:class:`CacheConfig`) and
what heads checkpoints and indexes keep of the cache they came from (:class:`TrainedOn`).

Each is a :class:`~avfeat.data.records.BackboneSpec` (models, layers, dims, rates, geometry,
storage, pooling, decode mode: everything that decides the tokens) plus a few fields of its own,
read from and written to JSON with a ``config_version``. A file of an earlier avfeat has no
version (0) and lacks the keys added since; they read as what such a cache holds (float16,
unpooled, exact frames), so every file ever written still loads. Settings reach checkpoints
and indexes through these types, never through copied dict keys, so a new setting cannot be
dropped on the way (as ``decode_mode`` once was).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from avfeat.core.errors import CacheError
from avfeat.data.codecs import STORAGES
from avfeat.data.records import BackboneSpec

# 1: the first versioned files (cache.json, a checkpoint's "cache", an index's "cache").
CONFIG_VERSION = 1

# cache.json keys added after caches already existed, and what a cache without them holds.
CONFIG_DEFAULTS = {"storage": "float16", "pool_patches": 1, "decode_mode": "exact"}
DECODE_MODES = ("exact", "keyframes")  # which frame serves each 1/fps step (extract/media.py): the CLI's and the decoder's list
HEAD_KINDS = ("linear", "mlp")  # the heads' kinds (align/heads.py), here so the CLI lists them without torch
AGGREGATIONS = ("max-mean", "mean-pool", "cls")  # clip scores (align/heads.py)
POOL_FACTORS = (1, 2)  # DINOv2 patches averaged in blocks of this side (1: none): the CLI's and the encoder's list

# The keys every cache.json `avfeat extract` ever wrote holds: those that describe its tokens.
REQUIRED_KEYS = (
    "audio_model", "audio_layer", "audio_dim", "audio_token_rate",
    "visual_model", "visual_layer", "visual_dim", "visual_tokens", "fps",
)


def _known(cls, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    known = {k: v for k, v in values.items() if k in names and v is not None}
    if "visual_grid" in known:
        known["visual_grid"] = tuple(known["visual_grid"])
    return known


# Keys of a cache description whose number must be above zero (rates); other numbers may be 0 or -1.
POSITIVE_KEYS = ("fps", "audio_token_rate", "sample_rate")
READ_DTYPES = ("float16", "float32")  # storage_dtype: what reads return (numpy and torch both have them)
# Keys whose value is one of a few: anything else fails later, deep in a reader or the decoder.
CHOICES = {"storage": STORAGES, "decode_mode": DECODE_MODES, "pool_patches": POOL_FACTORS, "storage_dtype": READ_DTYPES}


def _fits(kind: str, value: Any) -> bool:
    """Whether a JSON ``value`` fits a dataclass field annotated ``kind`` (its text)."""
    if value is None:
        return "None" in kind
    if isinstance(value, bool):
        return kind.startswith("bool")
    if kind.startswith(("str", "bool")):
        return isinstance(value, str) if kind.startswith("str") else False
    if kind.startswith("int"):
        return isinstance(value, int)
    if kind.startswith("float"):
        return isinstance(value, (int, float)) and math.isfinite(value)
    if kind.startswith("tuple"):
        return isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if kind.startswith("dict"):
        return isinstance(value, dict)
    return True


def spec_problem(values: Any, cls: type | None = None) -> str | None:
    """The first key of a cache description (cache.json, the "cache" section of a checkpoint or
    an index) whose value has the wrong type or range, as ``"KEY is VALUE"``; None when each fits
    (keys an older file lacks are not checked: they keep their defaults)."""
    if not isinstance(values, dict):
        return f"a {type(values).__name__}, not a JSON object"
    for f in fields(cls or TrainedOn):
        if f.name not in values:
            continue
        value = values[f.name]
        bad = not _fits(str(f.type), value) or (f.name in POSITIVE_KEYS and value is not None and value <= 0)
        bad = bad or (f.name in CHOICES and value not in CHOICES[f.name])
        if bad:
            return f"{f.name} is {str(value)[:60]!r}" if isinstance(value, str) else f"{f.name} is {value!r:.60}"
    return None


@dataclass(frozen=True)
class CacheConfig(BackboneSpec):
    """``cache.json``: how a cache's tokens were made."""

    avfeat_version: str = ""
    config_version: int = 0  # 0: written before configs had versions

    @classmethod
    def from_dict(cls, values: Any, cache: str = "the cache") -> "CacheConfig":
        """From the JSON object of ``cache``'s cache.json.

        Raises:
            CacheError: not a JSON object holding the keys that describe tokens.
        """
        if not isinstance(values, dict):
            raise CacheError(f"{cache} is not an avfeat cache (its cache.json is not a JSON object); restore it from a copy")
        missing = [key for key in REQUIRED_KEYS if key not in values]
        if missing:
            what = "is empty" if not values else f"lacks {', '.join(missing)}"
            raise CacheError(f"{cache} is not an avfeat cache (its cache.json {what}); restore it from a copy, or re-extract into a new --out")
        problem = spec_problem({k: v for k, v in values.items() if v is not None}, cls)  # null: the default, as _known reads it
        if problem is not None:
            raise CacheError(f"{cache} is not an avfeat cache (its cache.json's {problem}); restore it from a copy, or re-extract into a new --out")
        try:
            return cls(**_known(cls, values))
        except TypeError as error:
            raise CacheError(f"{cache} is not an avfeat cache (its cache.json: {error})") from None


@dataclass(frozen=True)
class TrainedOn(BackboneSpec):
    """The cache a heads checkpoint was trained on, or an index built from (the ``"cache"``
    section of config.json and meta.json): its config, where it was, its fingerprint, and how
    its tokens were computed, so that queries compute theirs the same way."""

    path: str = ""
    fingerprint: str = ""
    compute_dtype: str | None = None
    videos_fingerprint: str | None = None  # an index's: the indexed videos' records
    pool_patches_recorded: bool = True  # files of before --pool-patches: the patch grid tells
    config_version: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainedOn":
        known = _known(cls, values)
        known["pool_patches_recorded"] = "pool_patches" in values
        return cls(**known)

    @classmethod
    def of(cls, config: BackboneSpec, path: str, fingerprint: str, compute_dtype: str | None, **extra) -> "TrainedOn":
        """The record of ``config``'s cache at ``path``."""
        values = {f.name: getattr(config, f.name) for f in fields(BackboneSpec)}
        return cls(**values, path=path, fingerprint=fingerprint, compute_dtype=compute_dtype, config_version=CONFIG_VERSION, **extra)

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        values.pop("pool_patches_recorded")
        if values["videos_fingerprint"] is None:
            values.pop("videos_fingerprint")
        return values


@dataclass
class HeadConfig:
    """Shape of the heads; stored in a checkpoint's config.json."""

    audio_dim: int
    visual_dim: int
    dim: int = 256
    head: str = "linear"
    aggregation: str = "max-mean"
    init_temperature: float = 0.07

    def __post_init__(self):
        if self.head not in HEAD_KINDS:
            raise ValueError(f"unknown head {self.head!r} ({', '.join(HEAD_KINDS)})")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r} ({', '.join(AGGREGATIONS)})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HeadConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
