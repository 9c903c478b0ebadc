"""What a cache holds and whether its shards are whole: the reports behind `avfeat info`, and the
repair a resumed `avfeat extract --repair` runs first.

The functions return plain dicts (what ``--json`` prints) or raise :class:`CacheError`; the
command line formats and prints them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from avfeat.core.errors import CacheError
from avfeat.data.cache import Cache
from avfeat.data.shards import ShardDamage, remove_damaged

def _damage_entry(damage: ShardDamage) -> dict[str, Any]:
    return {"shard": damage.path.name, "problem": damage.problem, "video_ids": damage.video_ids}


def cache_summary(path: str | Path) -> dict[str, Any]:
    """Models, videos by status, hours, bytes, failures, every video, and the shards missing or
    truncated (checked by size, without reading them: ``verify_cache`` reads them).

    Raises:
        CacheError: ``path`` is not a cache, or its cache.json lacks the keys that describe its tokens.
    """
    with Cache(path) as store:
        damaged = store.verify(hashes=False)  # a deleted or truncated shard, without reading any
        records = store.records()
        ok = [r for r in records if r.ok]
        hours = sum(r.duration for r in ok) / 3600
        shards = store.layout.shards()
        parts = store.layout.parts()
        size = sum(p.stat().st_size for p in shards.values()) + sum(p.stat().st_size for p in parts.values())
        return {
            "path": str(path),
            "config": store.config.to_dict(),
            "videos": len(records),
            "status_counts": store.status_counts(),
            "media_hours": hours,
            "shards": len(shards),
            "shards_committed": len(parts),
            "bytes": size,
            "bytes_per_media_hour": size / hours if hours else None,
            "storage": store.config.storage,
            "pool_patches": store.config.pool_patches,
            "audio_tokens": sum(r.audio_length for r in ok),
            "frames": sum(r.visual_length for r in ok),
            "failures": [{"video_id": r.video_id, "path": r.path, "status": r.status, "error": r.error} for r in records if not r.ok],
            "metadata_columns": sorted({name for r in records for name in r.metadata}),  # the input table's other columns
            "video_list": [{"video_id": r.video_id, "status": r.status, "duration": r.duration, "path": r.path, "metadata": r.metadata}
                           for r in records],
            "damaged": [_damage_entry(d) for d in damaged],
        }


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
