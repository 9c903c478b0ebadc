"""What a cache holds and whether its shards are whole: the reports behind `avfeat info`, and the
repair a resumed `avfeat extract --repair` runs first.

The functions return plain dicts (what ``--json`` prints) or raise :class:`CacheError`; the
command line formats and prints them.
"""

from __future__ import annotations

from itertools import repeat
from pathlib import Path
from typing import Any, Callable

from avfeat.core.errors import CacheError
from avfeat.data.cache import Cache
from avfeat.data.manifest import manifest_schema
from avfeat.data.records import Status
from avfeat.data.shards import ShardDamage, remove_damaged

def _damage_entry(damage: ShardDamage) -> dict[str, Any]:
    return {"shard": damage.path.name, "problem": damage.problem, "video_ids": damage.video_ids}


def cache_summary(path: str | Path, videos: bool = True) -> dict[str, Any]:
    """Models, videos by status, hours, bytes, failures, every video (``videos``; else no
    "video_list"), and the shards missing or truncated (checked by size, without reading them:
    ``verify_cache`` reads them). Worked out column by column: a million videos take seconds.

    Raises:
        CacheError: ``path`` is not a cache, or its cache.json lacks the keys that describe its tokens.
    """
    import pyarrow.compute as pc

    with Cache(path) as store:
        damaged = store.verify(hashes=False)  # a deleted or truncated shard, without reading any
        table = store.manifest
        ok = pc.equal(table.column("status"), Status.OK.value)
        done = table.filter(ok)
        hours = sum(done.column("duration").to_pylist()) / 3600  # summed in order, as before
        shards = store.layout.shards()
        parts = store.layout.parts()
        size = sum(p.stat().st_size for p in shards.values()) + sum(p.stat().st_size for p in parts.values())
        metadata = [name for name in table.column_names if name not in manifest_schema().names] if table.num_rows else []
        failed = table.filter(pc.invert(ok)).select(["video_id", "path", "status", "error"]).to_pylist()
        report = {
            "path": str(path),
            "config": store.config.to_dict(),
            "videos": table.num_rows,
            "status_counts": store.status_counts(),
            "media_hours": hours,
            "shards": len(shards),
            "shards_committed": len(parts),
            "bytes": size,
            "bytes_per_media_hour": size / hours if hours else None,
            "storage": store.config.storage,
            "pool_patches": store.config.pool_patches,
            "audio_tokens": _total(done, "audio_length"),
            "frames": _total(done, "visual_length"),
            "failures": failed,
            "metadata_columns": sorted(metadata),  # the input table's other columns
            "damaged": [_damage_entry(d) for d in damaged],
        }
        if videos:
            report["video_list"] = _video_list(table, metadata)
        return report


def _total(table, column: str) -> int:
    import pyarrow.compute as pc

    return pc.sum(table.column(column)).as_py() or 0


def _video_list(table, metadata: list[str]) -> list[dict[str, Any]]:
    """Each video's id, status, duration, path and metadata (the input table's columns)."""
    shown = zip(*(table.column(name).to_pylist() for name in ("video_id", "status", "duration", "path")))
    values = zip(*(table.column(name).to_pylist() for name in metadata)) if metadata else repeat(())
    return [{"video_id": vid, "status": status, "duration": duration, "path": where, "metadata": dict(zip(metadata, row))}
            for (vid, status, duration, where), row in zip(shown, values)]


def verify_cache(path: str | Path) -> dict[str, Any]:
    """Every committed shard checked against the size and SHA-256 its manifest recorded:
    ``{"shards": committed shards, "damaged": [{"shard", "problem", "video_ids"}, ...]}``."""
    with Cache(path) as store:
        damaged = store.verify()
        shards = len(store.layout.parts())
    return {"shards": shards, "damaged": [_damage_entry(d) for d in damaged]}


def refuse_damaged(path: str | Path, damaged: list, shards: int, what: str = "missing or truncated") -> None:
    """Raise :class:`CacheError` when a report found ``damaged`` shards, saying how to repair them."""
    if damaged:
        raise CacheError(f"{len(damaged)} of {shards} shards are {what}; `avfeat extract INPUT --out {path} --resume --repair` extracts their videos again")


def repair_cache(path: str | Path, note: Callable[[str], None] | None = None) -> list[ShardDamage]:
    """Forget the shards whose bytes differ from their recorded SHA-256 (their manifest parts
    and files), so that a resumed extract does their videos again. ``note`` is told of each one
    before it goes; the caller holds the cache's writer lock."""
    with Cache(path) as store:
        damaged = store.verify()
    for damage in damaged:
        if note is not None:
            note(f"{damage.line()}: extracting its {len(damage.video_ids)} videos again")
    remove_damaged(store.layout, damaged)
    return damaged
