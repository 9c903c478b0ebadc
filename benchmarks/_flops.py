"""What the backbones ask of a CPU and how much of it they get: FLOPs counted by torch's own
``FlopCounterMode``, the CPU's peak from its flags and clock, and a per-op profile.

The peak is an estimate, printed with its basis: threads x clock (``cpu MHz`` of
/proc/cpuinfo, or ``--ghz``) x FLOPs per cycle and core of the widest units the path can use:
AVX2 + FMA 32 (two 8-lane FMA units, float32), AVX-512 64, AVX-512 BF16 128 (bfloat16),
AMX 1024 (bfloat16 tiles). An int8 path is measured against the float32 peak.
"""

from __future__ import annotations

FLOPS_PER_CYCLE = {"avx2": 32, "avx512": 64, "avx512_bf16": 128, "amx": 1024}


def _sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """Scaled dot-product attention: Q K^T and the weighted sum of V (softmax not counted)."""
    *batch, length, depth = query_shape
    heads = 1
    for size in batch:
        heads *= size
    return 2 * heads * length * key_shape[-2] * (depth + value_shape[-1])


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` (matrix products, convolutions and attention; elementwise work is not
    counted). torch's counter knows no formula for the CPU's fused attention: it is added."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


def clock_ghz() -> float | None:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) / 1000
    except (OSError, ValueError):
        pass
    return None


def peak_flops(dtype: str, flags: dict, threads: int, ghz: float | None) -> tuple[float | None, str]:
    """(peak FLOP/s, its basis in words) of ``threads`` cores for a path of ``dtype``."""
    if dtype == "bfloat16" and flags.get("amx_bf16"):
        unit = "amx"
    elif dtype == "bfloat16" and flags.get("avx512_bf16"):
        unit = "avx512_bf16"
    elif flags.get("avx512f"):
        unit = "avx512"
    else:
        unit = "avx2"
    if not ghz:
        return None, f"{unit}: clock unknown (pass --ghz)"
    per_cycle = FLOPS_PER_CYCLE[unit]
    return threads * ghz * 1e9 * per_cycle, f"{threads} cores x {ghz:.2f} GHz x {per_cycle} FLOPs/cycle ({unit})"


def top_ops(fn, count: int = 10) -> list[tuple[str, float, float]]:
    """The ``count`` ops of ``fn()`` with the most self CPU time: (name, ms, share of all)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1000, e.self_cpu_time_total / total) for e in events[:count]]
