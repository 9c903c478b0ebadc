"""The `avfeat index` job: build an index folder from a cache and heads, or add the cache's new
videos to one (``--update``)."""

from __future__ import annotations

import os

from avfeat.core.errors import InputError
from avfeat.core.values import check_number
from avfeat.index.build import build_index


def index_cache(
    cache_path: str | os.PathLike,
    heads: str | os.PathLike,
    out: str | os.PathLike,
    window: float | None = None,
    hop: float | None = None,
    factory: str | None = None,
    memory_budget: str | None = None,
    shards: int | None = None,
    overwrite: bool = False,
    update: bool = False,
    quiet: bool = True,
):
    """`avfeat index`: build the index folder ``out`` from the cache at ``cache_path`` and the
    checkpoint ``heads`` (``build_index``: its meta.json contents), or with ``update`` add the
    cache's new videos to it (``avfeat.index.update.update_index``: an ``Update``).

    ``memory_budget`` is a size as text (e.g. 4GB). An update keeps what the index was built
    with, so the options that would silently not apply are refused with it."""
    from avfeat.core.values import parse_size
    from avfeat.data.cache import Cache
    from avfeat.index.store import load_heads
    from avfeat.index.update import update_index

    if update:
        given = [name for name, value in (("--window", window), ("--hop", hop), ("--factory", factory), ("--memory-budget", memory_budget),
                                          ("--shards", shards), ("--overwrite", overwrite or None)) if value is not None]
        if given:
            raise InputError(f"--update keeps the index's window, hop, index type and shards; drop {', '.join(given)} (or rebuild with --overwrite)")
    check_number("--window", window)
    check_number("--hop", hop)
    budget = parse_size(memory_budget) if memory_budget else None
    checkpoint = load_heads(heads)
    with Cache(cache_path) as store:
        if update:
            return update_index(store, checkpoint, out, quiet=quiet)
        return build_index(
            store, checkpoint, out, window=window, hop=hop, factory=factory,
            memory_budget=budget, quiet=quiet, shards=1 if shards is None else shards, overwrite=overwrite,
        )
