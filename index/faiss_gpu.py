"""FAISS on the GPUs when faiss-gpu sees one: moving indexes there and back (indexes are always
stored as CPU indexes) and setting search parameters on either kind."""

from __future__ import annotations

from typing import Any


def gpu_count() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def to_gpu(index):
    """The index on all GPUs when faiss-gpu sees one and supports its type; else unchanged."""
    if gpu_count() == 0:
        return index
    import faiss

    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError):  # e.g. HNSW has no GPU version
        return index


def to_cpu(index):
    import faiss

    if gpu_count() and hasattr(faiss, "index_gpu_to_cpu"):
        try:
            return faiss.index_gpu_to_cpu(index)
        except (RuntimeError, AttributeError):
            pass
    return index


def set_search_params(index, params: dict[str, Any]) -> None:
    import faiss

    space = faiss.GpuParameterSpace() if gpu_count() and hasattr(faiss, "GpuParameterSpace") else faiss.ParameterSpace()
    for name, value in params.items():
        try:
            space.set_index_parameter(index, name, value)
        except RuntimeError:
            pass  # e.g. efSearch on a GPU copy of an index type without it
