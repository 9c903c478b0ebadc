"""Which torch device a ``--device`` name means, checked with one error for every command."""

from __future__ import annotations

from typing import TYPE_CHECKING

from avfeat.core.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

# ---- devices -------------------------------------------------------------------------------


def resolve_device(name: str) -> "torch.device":
    """``auto`` → the first CUDA GPU when there is one, else the CPU; any other name is checked.

    Raises:
        InputError: the name is not a device, or names a CUDA device this machine lacks.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: no CUDA GPU is available (use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: there are only {torch.cuda.device_count()} GPUs")
    elif device.type not in ("cpu", "mps"):
        raise InputError(f"--device {name}: avfeat runs on cpu or cuda")
    return device
