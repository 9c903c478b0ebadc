"""How a shard holds token rows: one codec per ``--storage``, the one place that writes and reads
token bytes, used by the shard writer, the cache's reads and the streaming reader alike.

A codec stores a modality's tokens as one or more datasets beside each other in the shard
(``audio/tokens``, and for int8 ``audio/scale``), all with one row per token (or per frame), so
rows ``[a, b)`` of every part are one window. Which codec a shard used is read from the shard
itself (the tokens' dtype), never assumed from the config.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avfeat.core.errors import CacheError

INT8_LEVELS = 127  # symmetric: q in [-127, 127], so -x quantizes to -q


def quantize_int8(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token symmetric int8 quantization of ``tokens`` (..., D): for each token vector x,
    scale = max|x| / 127 and q = round(x / scale), so |q * scale - x| <= scale / 2 per element.
    A token of zeros gets scale 0 (and q 0). Returns (q int8 (..., D), scale float32 (...)).

    Raises:
        ValueError: the tokens hold NaN or inf (the writer records such a video as non_finite first).
    """
    x = np.asarray(tokens, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("cannot quantize non-finite tokens (NaN or inf)")
    scale = (np.abs(x).max(axis=-1) / np.float32(INT8_LEVELS)).astype(np.float32) if x.shape[-1] else np.zeros(x.shape[:-1], np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))[..., None]
    q = np.clip(np.rint(x / safe), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    return q, scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray, dtype="float32") -> np.ndarray:
    """The float tokens of :func:`quantize_int8`'s (q, scale), computed in float32, returned in ``dtype``."""
    values = q.astype(np.float32) * np.asarray(scale, dtype=np.float32)[..., None]
    return values if np.dtype(dtype) == np.float32 else values.astype(dtype)


@dataclass(frozen=True)
class Part:
    """One dataset of a modality's tokens: ``name`` beside ``tokens`` in the modality's group,
    its dtype (None: the writer's float dtype) and how many trailing token axes it drops."""

    name: str
    dtype: str | None
    drops_last_axis: bool = False

    def row_shape(self, token_row: tuple[int, ...]) -> tuple[int, ...]:
        return token_row[:-1] if self.drops_last_axis else token_row


@dataclass(frozen=True)
class Codec:
    """A storage: the parts it writes, how float tokens become them and back."""

    name: str
    parts: tuple[Part, ...]

    @property
    def floats(self) -> bool:
        """Whether the tokens are stored as floats, readable with no decoding."""
        return self.name == "float16"

    def encode(self, tokens: np.ndarray, float_dtype: str = "float16") -> dict[str, np.ndarray]:
        """Finite float tokens (..., D) → {part name: array}, rows matching the tokens'."""
        if self.floats:
            return {"tokens": np.asarray(tokens).astype(float_dtype, copy=False)}
        q, scale = quantize_int8(tokens)
        return {"tokens": q, "scale": scale}

    def decode(self, parts: dict[str, np.ndarray], dtype) -> np.ndarray:
        """{part name: rows} → float tokens in ``dtype`` (float storage: as stored when it is ``dtype``)."""
        if self.floats:
            tokens = parts["tokens"]
            return tokens if tokens.dtype == np.dtype(dtype) else tokens.astype(dtype)
        return dequantize_int8(parts["tokens"], parts["scale"], dtype)

    def dataset(self, group, modality: str, part: str, filename: str):
        """The shard's dataset of ``part`` (``group``: an open h5py file or a name → dataset
        lookup returning None when absent); a missing part is the one error for it."""
        found = group.get(f"{modality}/{part}") if hasattr(group, "get") else group(f"{modality}/{part}")
        if found is None:
            raise CacheError(f"shard {filename} holds {self.name} {modality} tokens without their {modality}/{part}; re-extract it")
        return found


CODECS = {
    "float16": Codec("float16", (Part("tokens", None),)),
    "int8": Codec("int8", (Part("tokens", "int8"), Part("scale", "float32", drops_last_axis=True))),
}
STORAGES = tuple(CODECS)  # how shards hold tokens: the one list the CLI, the encoder and the writer take


def codec_of(tokens_dtype) -> Codec:
    """The codec of a shard's ``modality/tokens`` dataset, from its dtype: the shard says."""
    return CODECS["int8"] if np.dtype(tokens_dtype) == np.int8 else CODECS["float16"]


def storage_codec(name: str) -> Codec:
    """The codec of ``--storage name``.

    Raises:
        CacheError: no such storage.
    """
    if name not in CODECS:
        raise CacheError(f"unknown token storage {name!r} ({', '.join(STORAGES)})")
    return CODECS[name]
