"""Where and in what number format a backbone runs: dtype and device names, the int8 (CPU,
dynamically quantized linears) path, and moving batches to the device."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from avfeat.core.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import torch

_DTYPES = ("float32", "float16", "bfloat16", "int8")
COMPUTE_DTYPES = ("auto", *_DTYPES)  # --dtype (see resolve_dtype in extract/job.py)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0].strip()
    return line[:300]


def parse_dtype(dtype: str):
    import torch

    if dtype not in _DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return torch.float32 if dtype == "int8" else getattr(torch, dtype)  # int8: loaded in float32, then quantized


def check_int8_device(dtype: str, dev) -> None:
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

    check_int8_device("int8", torch.device(device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        per_channel = torch.ao.quantization.per_channel_dynamic_qconfig
        return quantize_dynamic(model, {torch.nn.Linear: per_channel}, dtype=torch.qint8, inplace=True)


def parse_device(device: str):
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"unknown device {device!r}: {one_line(exc)}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    return dev


def to_device(t: "torch.Tensor", device) -> "torch.Tensor":
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
