"""Heads checkpoints: a directory that other stages load, and the training state for resume.

Layout::

    heads.safetensors   the heads' weights (what `avfeat index` and notebooks load) with, in its
                        metadata, the config they were trained under (as config.json holds it)
    config.json         heads config, window, hop, the cache it was trained on, training options,
                        the train/validation split, avfeat version: the run's config, for resume
    state.safetensors   everything resume needs in one file: weights, AdamW moments, RNG
                        states (tensors) and the step, epoch and metric history (JSON metadata)
    metrics.jsonl       one line per epoch (rewritten from the state's history)
    curves.png          loss and recall curves

Every file is written to ``*.tmp`` and renamed, so each file is always whole. heads.safetensors
is self-contained: weights and config are replaced by one rename, so a checkpoint loads as the
old heads or the new ones, never a mix. That is what lets ``train-head --overwrite`` keep the old
heads until its first save (config.json is rewritten when the run starts). Heads files of
earlier versions carry no config and load with config.json. The state file carries its own copy
of the weights, so a crash between renaming the state and the heads still resumes exactly (the
heads are rewritten at the next save). Nothing is ever unpickled: tensors go through
safetensors, everything else through JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avfeat.core.io import write_atomic
from avfeat.core.values import one_line
from avfeat.core.errors import CheckpointError
from avfeat.data.configs import CONFIG_VERSION, HeadConfig, TrainedOn

if TYPE_CHECKING:  # torch loads only where weights become modules: queries read heads without it
    import torch

    from avfeat.align.heads import AVHeads

HEADS_FILE = "heads.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "state.safetensors"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"
OWN_FILES = (HEADS_FILE, CONFIG_FILE, STATE_FILE, METRICS_FILE, CURVES_FILE)
KIND = "heads checkpoint"  # the owner record's kind (avfeat.core.outputs)
CONFIG_MARKS = ("heads", "cache")  # keys every checkpoint's config.json holds: how a folder is known for avfeat's heads


def fingerprint_bytes(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


def save_heads(folder: Path, heads: AVHeads, config: dict) -> str:
    """Write heads.safetensors with the checkpoint ``config`` in its metadata; returns its
    fingerprint."""
    from safetensors.torch import save

    tensors = {k: v.detach().float().cpu().contiguous() for k, v in heads.state_dict().items()}
    data = save(tensors, metadata={"config": json.dumps(config, sort_keys=True)})
    write_atomic(folder / HEADS_FILE, data)
    return fingerprint_bytes(data)


def embedded_config(data: bytes, where: Path) -> dict | None:
    """The config in the metadata of heads.safetensors bytes ``data``; None for a file of an
    earlier version, which has none. (A safetensors file starts with the 8-byte little-endian
    length of its JSON header, whose ``__metadata__`` holds string values.)

    Raises:
        CheckpointError: there is a config but it cannot be read.
    """
    try:
        size = int.from_bytes(data[:8], "little")
        text = json.loads(data[8 : 8 + size]).get("__metadata__", {}).get("config")
    except (ValueError, AttributeError):
        return None  # not a readable safetensors header: loading the weights says so
    if text is None:
        return None
    try:
        config = json.loads(text)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"cannot read the config in {where}: {one_line(error)}") from None
    return _checked(config, where)


def has_embedded_config(path: Path) -> bool:
    """Whether the heads file ``path`` exists and carries its config (read from its header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return "config" in (handle.metadata() or {})
    except Exception:  # missing, or not a readable safetensors file
        return False


def save_config(folder: Path, config: dict) -> None:
    write_atomic(folder / CONFIG_FILE, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())


def read_config(folder: Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a heads checkpoint (no {CONFIG_FILE}); train one with `avfeat train-head`") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from None
    return _checked(config, path)


def read_heads_config(folder: Path) -> "HeadsConfig":
    """config.json as a :class:`HeadsConfig`.

    Raises:
        CheckpointError: missing, unreadable, or not a heads config.
    """
    config = read_config(folder)
    try:
        return HeadsConfig.from_dict(config)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise CheckpointError(f"{Path(folder) / CONFIG_FILE} is not a heads config ({one_line(error)})") from None


def _checked(config, where: Path) -> dict:
    if not isinstance(config, dict) or not isinstance(config.get("heads"), dict) or "window" not in config:
        raise CheckpointError(f"{where} holds no heads config (no 'heads' or 'window')")
    return config


@dataclass(frozen=True)
class HeadsConfig:
    """A checkpoint's config (config.json, and the copy inside heads.safetensors): the heads'
    shape, the window and hop they embed, the cache they were trained on, the training options
    and split, versioned. Files of an earlier avfeat (no version) still load."""

    heads: HeadConfig
    window: float
    cache: TrainedOn
    hop: float | None = None
    training: dict[str, Any] = field(default_factory=dict)  # TrainConfig.to_dict (align.config reads it)
    split: dict[str, Any] = field(default_factory=dict)  # {"train_videos": [...], "val_videos": [...]}
    avfeat_version: str = ""
    config_version: int = 0
    output_id: str = ""  # the id of the folder's owner record (avfeat.core.outputs); "" before it had one
    best_epoch: int | None = None  # the epoch whose heads heads.safetensors holds (the best validation loss); None before it was recorded

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "HeadsConfig":
        """Raises ValueError or TypeError for a value no checkpoint holds (read_heads_config
        makes it one line): a damaged file must not load and fail later, far from its cause."""
        config = cls(
            heads=HeadConfig.from_dict(values["heads"]), window=float(values["window"]),
            cache=TrainedOn.from_dict(values.get("cache") or {}), hop=values.get("hop"),
            training=dict(values.get("training") or {}), split=dict(values.get("split") or {}),
            avfeat_version=str(values.get("avfeat_version", "")), config_version=int(values.get("config_version", 0)),
            output_id=str(values.get("output_id") or ""), best_epoch=values.get("best_epoch"),
        )
        for name in ("audio_dim", "visual_dim", "dim"):
            value = getattr(config.heads, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"heads.{name} {value!r} is not a positive whole number")
        for name, value in (("heads.init_temperature", config.heads.init_temperature), ("window", config.window), ("hop", config.hop)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0):
                raise ValueError(f"{name} {value!r} is not a positive number")
        return config

    def to_dict(self) -> dict[str, Any]:
        return {
            "heads": self.heads.to_dict(), "window": self.window, "hop": self.hop, "cache": self.cache.to_dict(),
            "training": self.training, "split": self.split, "avfeat_version": self.avfeat_version, "config_version": CONFIG_VERSION,
            **({"output_id": self.output_id} if self.output_id else {}),
            **({"best_epoch": self.best_epoch} if self.best_epoch is not None else {}),
        }


@dataclass
class Checkpoint:
    """Trained heads ready to project tokens, with the config they were trained under."""

    heads: AVHeads
    config: HeadsConfig
    fingerprint: str
    path: Path

    @property
    def window(self) -> float:
        return self.config.window

    @property
    def hop(self) -> float:
        return float(self.config.hop or self.window / 2)

    @property
    def aggregation(self) -> str:
        return self.heads.config.aggregation

    @property
    def cache_fingerprint(self) -> str:
        return self.config.cache.fingerprint

    @property
    def spec(self) -> TrainedOn:
        """The :class:`~avfeat.data.records.BackboneSpec` of the tokens the heads were trained on."""
        return self.config.cache

    def check_cache(self, cache) -> None:
        """Refuse a cache of other backbones (BackboneMismatchError, naming each difference)."""
        self.spec.check_same(cache.spec, f"heads {self.path}", f"cache {cache.layout.root}")


def _finite_weights(data: bytes, where: Path, framework: str = "torch") -> dict:
    """The tensors of heads.safetensors bytes ``data`` (torch tensors, or numpy arrays with
    ``framework="numpy"``), every one finite.

    Raises:
        CheckpointError: the file is truncated or garbled, or a weight holds NaN or infinity
            (a tampered or bit-rotted file would embed everything as NaN).
    """
    import numpy as np
    from safetensors import SafetensorError

    if framework == "numpy":
        from safetensors.numpy import load
    else:
        from safetensors.torch import load
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"cannot read {where} (truncated or damaged: {one_line(error)}); restore it or train again") from None
    for name, tensor in tensors.items():
        values = tensor.float().numpy() if framework == "torch" and tensor.is_floating_point() else np.asarray(tensor)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise CheckpointError(f"{where} is damaged: weight {name} holds NaN or infinite values; restore it or train again")
    return tensors


def read_heads_file(path: str | Path) -> tuple[bytes, HeadsConfig]:
    """The bytes of a checkpoint folder's heads.safetensors and the config stored in them
    (config.json for a file of an earlier version, which has none), without torch.

    Raises:
        CheckpointError: the folder or file is missing, or the config is damaged.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"heads checkpoint {folder} does not exist")
    try:
        data = (folder / HEADS_FILE).read_bytes()
    except FileNotFoundError:
        read_config(folder)  # no config.json either: not a checkpoint at all
        raise CheckpointError(f"{folder} has no {HEADS_FILE} (training has not finished an epoch yet?)") from None
    # The config from the same bytes as the weights: config.json may already be a newer run's.
    config = embedded_config(data, folder / HEADS_FILE) or read_config(folder)
    try:
        return data, HeadsConfig.from_dict(config)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise CheckpointError(f"{folder / HEADS_FILE} does not match its config: {one_line(error)}") from None


def load_checkpoint(path: str | Path, device: str = "cpu") -> Checkpoint:
    """Load ``heads.safetensors`` from a checkpoint folder (eval mode), with the config stored in
    it (see ``read_heads_file``).

    Raises:
        CheckpointError: the folder, a file, or a weight is missing, damaged, not finite, or does
            not fit the config.
    """
    from avfeat.align.heads import AVHeads

    folder = Path(path)
    data, config = read_heads_file(folder)
    tensors = _finite_weights(data, folder / HEADS_FILE)
    try:
        heads = AVHeads(config.heads)
        heads.load_state_dict(tensors)
    except (ValueError, TypeError, RuntimeError, KeyError, AttributeError) as error:
        raise CheckpointError(f"{folder / HEADS_FILE} does not match its config: {one_line(error)}") from None
    heads.to(device).eval()
    return Checkpoint(heads=heads, config=config, fingerprint=fingerprint_bytes(data), path=folder)


def save_state(folder: Path, heads: AVHeads, optimizer: torch.optim.Optimizer, rng: dict[str, torch.Tensor], meta: dict) -> None:
    """Write state.safetensors: weights, optimizer moments, RNG states and JSON ``meta``."""
    import torch
    from safetensors.torch import save

    tensors = {f"heads.{k}": v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    optim = optimizer.state_dict()
    for index, state in optim["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors.update({f"rng.{k}": v.cpu().contiguous() for k, v in rng.items()})
    meta = dict(meta, optimizer_groups=optim["param_groups"])
    write_atomic(folder / STATE_FILE, save(tensors, metadata={"state": json.dumps(meta)}))


def load_state(folder: Path, heads: AVHeads, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore weights and optimizer from state.safetensors; returns (RNG states, meta)."""
    from safetensors import safe_open
    from safetensors.torch import load

    path = folder / STATE_FILE
    try:
        data = path.read_bytes()
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads(handle.metadata()["state"])
        tensors = load(data)
    except FileNotFoundError:
        raise CheckpointError(f"{folder} has no {STATE_FILE}: nothing to resume (no epoch finished yet?)") from None
    except Exception as error:  # a damaged file: say so in one line
        raise CheckpointError(f"cannot read {path}: {error}") from None
    heads.load_state_dict({k[len("heads.") :]: v for k, v in tensors.items() if k.startswith("heads.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    groups = meta.pop("optimizer_groups")
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    rng = {k[len("rng.") :]: v for k, v in tensors.items() if k.startswith("rng.")}
    return rng, meta
