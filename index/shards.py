"""Sharded indexes: one FAISS index per contiguous range of rows, searched as one.

``avfeat index --shards N`` splits each modality's vectors (the rows of its window table) into
N contiguous ranges. The index is trained once (IVF coarse quantizer, PQ codebooks) and every
shard is a copy of that trained empty index holding its range under global ids (the table's
row numbers), so shards could be filled by separate processes or machines.

Searching asks every shard with the same parameters and merges the per-shard top-k lists
(``faiss.IndexShards``). That gives the results of one index over all rows: for Flat the same
exact scores; for IVF every shard probes the same ``nprobe`` lists of the shared quantizer, and
together the shards hold what one index would hold in those lists.

On machines where faiss-gpu sees GPUs, shard i goes to GPU i % (number of GPUs), so a
collection larger than one GPU's memory is spread over several.
"""

from __future__ import annotations

from avfeat.core.errors import InputError


def check_count(count: int) -> None:
    if count < 1:
        raise InputError(f"--shards must be 1 or more (got {count})")


def shard_ranges(n: int, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous [begin, end) ranges covering rows 0..n-1, sizes differing by one at most."""
    check_count(count)
    if count > max(n, 1):
        raise InputError(f"--shards {count} is more than the {n} vectors to index; use at most {n}")
    return [(i * n // count, (i + 1) * n // count) for i in range(count)]


def spread_on_gpus(indexes: list) -> list:
    """Shard i on GPU i % (number of GPUs) when faiss-gpu sees GPUs; else unchanged. An index
    type without a GPU version (e.g. HNSW) stays on the CPU."""
    from avfeat.index.faiss_gpu import gpu_count

    gpus = gpu_count()
    if gpus == 0:
        return list(indexes)
    import faiss

    resources = [faiss.StandardGpuResources() for _ in range(gpus)]
    placed = []
    for number, index in enumerate(indexes):
        device = number % gpus
        try:
            moved = faiss.index_cpu_to_gpu(resources[device], device, index)
        except (RuntimeError, AttributeError):
            placed.append(index)
            continue
        # The GPU index must not outlive its resources (faiss proxies take no new attribute but this).
        moved.referenced_objects = [*(getattr(moved, "referenced_objects", None) or []), resources[device]]
        placed.append(moved)
    return placed


def combine(indexes: list, threaded: bool = False):
    """One searchable index over shards that hold global ids: the index itself when there is one.

    ``threaded`` searches the shards at once, which pays off across GPUs; on the CPU each
    shard's search already uses every core.
    """
    if len(indexes) == 1:
        return indexes[0]
    import faiss

    merged = faiss.IndexShards(indexes[0].d, threaded, False)  # successive_ids=False: ids are global
    for index in indexes:
        merged.add_shard(index)
    return merged


def place(indexes: list):
    """Shards ready to search where they run fastest: one index on all GPUs (``to_gpu``), several
    spread over the GPUs, or on the CPU when there is none."""
    from avfeat.index.faiss_gpu import gpu_count, to_gpu

    if len(indexes) == 1:
        return to_gpu(indexes[0])
    return combine(spread_on_gpus(indexes), threaded=gpu_count() > 0)
