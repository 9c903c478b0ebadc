"""Loading a backbone from its spec (a hub id, a local ``save_pretrained`` directory, or
``random:<arch>``), online or offline, with every failure as one ``ModelError`` line; checking the
layer asked for and dropping the transformer layers after it."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from avfeat.core.errors import ModelError
from avfeat.extract.models.archs import RANDOM_ARCHS, RANDOM_MARKER, RANDOM_PREFIX, build_random, known_archs
from avfeat.extract.models.devices import check_int8_device, one_line, parse_device, parse_dtype, quantize_int8

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


def load_frozen(spec: str, family: str, layer: int, device: str, dtype: str, layers: str):
    """What both backbone loaders do: check the dtype and device, load ``spec``, check ``layer``
    and drop the layers after it (``model.encoder.<layers>``), quantize for int8, move the model
    to its device and dtype and freeze it.

    Returns:
        ``(model, processor, is_random, torch device)``.
    """
    torch_dtype = parse_dtype(dtype)
    dev = parse_device(device)
    check_int8_device(dtype, dev)  # before minutes of loading
    model, processor, is_random = load_model(spec, family, torch_dtype, weights=dev.type != "meta")
    num_layers = int(model.config.num_hidden_layers)
    _check_layer(layer, num_layers, spec)
    _truncate_layers(model.encoder, layers, layer, num_layers)
    if dtype == "int8" and dev.type != "meta":
        model = quantize_int8(model.to(device=dev, dtype=torch_dtype), dev)
    model.to(device=dev, dtype=torch_dtype)
    model.requires_grad_(False)
    return model, processor, is_random, dev


def load_model(spec: str, family: str, torch_dtype, weights: bool = True):
    """Resolve ``spec`` to ``(model, processor, is_random)``; every failure is a ModelError.
    Without ``weights`` the model is built from its config on the ``meta`` device: its shapes,
    rates and preprocessing, for a process that only describes the tensors (a Ray driver)."""
    if spec.startswith(RANDOM_PREFIX):
        return _load_random(spec, family, weights)
    return _load_pretrained(spec, family, torch_dtype, weights)


def _load_random(spec: str, family: str, weights: bool):
    what = f"{family} model {spec!r}"
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


def _load_pretrained(spec: str, family: str, torch_dtype, weights: bool):
    """A hub id or a local ``save_pretrained`` directory (see ``load_model``)."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoImageProcessor, AutoModel

    what = f"{family} model {spec!r}"

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
            return ModelError(f"cannot load {what}: {part} in that directory: {one_line(exc)}")
        if offline:
            return ModelError(
                f"cannot load {what}: not a local directory, HF_HUB_OFFLINE is set and the local "
                f"hub cache has no copy ({part}: {one_line(exc)})"
            )
        return ModelError(
            f"cannot load {what}: not a local directory and the hub is unreachable (offline?) "
            f"or has no such model ({part}: {one_line(exc)})"
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
        return model.eval(), processor, bool(getattr(config, RANDOM_MARKER, None))
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
    is_random = bool(getattr(model.config, RANDOM_MARKER, None))
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
