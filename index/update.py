"""Adding videos to an existing index (`avfeat index --update`).

``update_index`` adds the videos a cache gained since the index was built, with the index's
trained parts and tuned parameters as they are: the IVF lists were trained on the old vectors,
which stay a fair sample of the collection while the additions are small; after large growth
(say, half the collection again) a rebuild re-balances the lists. The new windows go into a new
delta file per modality and a new table part (``append_to_index``), so an update costs what its
new rows cost, not what the index costs; deltas are compacted now and then (``compact``).
Videos removed from the cache or extracted again are refused (a rebuild takes them)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avfeat.core.errors import SearchIndexError
from avfeat.index.build import ADD_BATCH, embed_cache, videos_fingerprint, window_table
from avfeat.index.faiss_gpu import to_cpu, to_gpu


@dataclass
class Update:
    """What ``update_index`` did: the videos and windows it added (0: nothing was new, nothing
    was written) and the index's meta.json contents."""

    videos: int
    windows: int
    meta: dict[str, Any]


def check_search_cache(folder, cache) -> None:
    """Refuse a ``cache`` that is not the one the index ``folder`` (an ``IndexFolder``) was built
    from. The cache's fingerprint changes whenever `extract --resume` adds videos, so a cache
    holding every indexed video with the records it had (the test ``--update`` applies) is the
    index's own; if it has since gained videos long enough for a window, the index is older.

    Raises:
        IndexMismatchError: another cache, or one with videos the index lacks.
    """
    from avfeat.core.errors import IndexMismatchError
    from avfeat.index.hits import AUDIO

    meta = folder.meta
    if meta["cache"]["fingerprint"] == cache.fingerprint():
        return
    recorded = meta["cache"].get("videos_fingerprint")
    ok = {record.video_id: record for record in cache.records(status="ok")}
    indexed = set(folder.table(AUDIO).column("video_id").unique().to_pylist())
    if recorded is None or not indexed <= ok.keys() or videos_fingerprint(ok[v] for v in indexed) != recorded:
        folder.check_cache(cache)  # another cache, or its videos extracted again: refused as such
    lacking = sorted(v for v, record in ok.items() if v not in indexed and record.duration >= float(meta.get("window") or 0))
    if lacking:
        root = cache.layout.root
        raise IndexMismatchError(
            f"the index {folder.path} is older than the cache {root}: it lacks {len(lacking)} of its videos (e.g. {lacking[0]}); "
            f"run `avfeat index {root} --heads {meta['heads'].get('path', 'HEADS')} --out {folder.path} --update`"
        )


def update_index(cache, checkpoint, out: str | os.PathLike, quiet: bool = True) -> Update:
    """Add the ok videos of ``cache`` that the index folder ``out`` does not hold yet, with the
    index's own window, hop, index type and trained parts (nothing is retrained or re-tuned).

    The heads must be the index's (fingerprint), the cache's backbones and rates its, and the
    cache must hold every indexed video with the tokens it had (the index's cache, or a copy
    that later extractions added to). The new windows go into the last FAISS file of each
    modality (the other files are kept as they are) and the tables, committed atomically by
    ``write_index``. The same writer lock as ``build_index``.
    """
    from avfeat.core.lock import writer_lock

    with writer_lock(out, "index", beside=True):
        return _update_index(cache, checkpoint, Path(out), quiet)


def _update_index(cache, checkpoint, out: Path, quiet: bool) -> Update:
    from avfeat.align.windows import WindowGeometry
    from avfeat.data.records import BackboneSpec
    from avfeat.core.errors import IndexMismatchError
    from avfeat.index.store import META_FILE, IndexFolder
    from avfeat.index.hits import AUDIO, VISUAL

    if not (out / META_FILE).is_file():
        raise SearchIndexError(f"{out} holds no index to update; build one with `avfeat index` (without --update)")
    folder = IndexFolder(out, mmap=False)
    meta, root = folder.meta, cache.layout.root
    folder.check_heads(checkpoint)
    BackboneSpec.from_dict(meta["cache"]).check_same(cache.spec, f"index {out}", f"cache {root}")
    geometry = WindowGeometry(meta["window"], meta["geometry"]["audio_rate"], meta["geometry"]["fps"])
    if WindowGeometry.for_cache(cache, geometry.seconds) != geometry:
        raise IndexMismatchError(
            f"cache {root} has {cache.config.fps} frames/s and {cache.config.audio_token_rate} audio tokens/s, "
            f"index {out} was built from {geometry.fps} and {geometry.audio_rate}; rebuild it with `avfeat index --overwrite`"
        )

    # The cache must still hold every indexed video, with the same tokens: the rows already in
    # the index stay as they are, so they must still describe the cache's videos.
    ok = {record.video_id: record for record in cache.records(status="ok")}
    indexed = set(folder.table(AUDIO).column("video_id").unique().to_pylist())
    missing = sorted(indexed - ok.keys())
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise IndexMismatchError(
            f"cache {root} lacks {len(missing)} video(s) of index {out} ({shown}); --update takes the cache the index "
            f"was built from or one holding all its videos; rebuild it with `avfeat index --overwrite`"
        )
    recorded = meta["cache"].get("videos_fingerprint")
    if recorded is None and meta["cache"]["fingerprint"] != cache.fingerprint():
        raise IndexMismatchError(f"index {out} was built by an avfeat that did not record its videos' tokens; rebuild it once with `avfeat index --overwrite`")
    if recorded is not None and videos_fingerprint(ok[v] for v in indexed) != recorded:
        raise IndexMismatchError(
            f"videos of index {out} were extracted again in cache {root} since the index was built (their records changed); "
            f"rebuild it with `avfeat index --overwrite`"
        )

    new = [record for video_id, record in ok.items() if video_id not in indexed]
    if not new:
        return Update(0, 0, meta)
    windows, audio, visual = embed_cache(cache, checkpoint.heads, geometry, meta["hop"], meta["aggregation"], quiet, records=new)
    if not windows:  # only videos shorter than one window are new
        return Update(0, 0, meta)
    added = {w.video_id for w in windows}
    meta = json.loads(json.dumps(meta))
    meta["cache"].update(
        path=str(Path(root).resolve()), fingerprint=cache.fingerprint(),
        videos_fingerprint=videos_fingerprint(ok[v] for v in indexed | added),
    )
    meta["videos"] = len(indexed | added)
    meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    written = append_to_index(folder, {AUDIO: audio, VISUAL: visual}, window_table(windows, new), meta)
    return Update(len(added), len(windows), written)


def append_to_index(folder, vectors: dict[str, np.ndarray], table, meta: dict[str, Any]) -> dict[str, Any]:
    """Add ``vectors`` (per modality; row i is row i of ``table``) to the loaded index ``folder``
    (``avfeat.index.store.IndexFolder``) under the ids that follow its rows, and write it with
    ``meta`` (counts set here); returns the new meta.json contents.

    The vectors go into a new delta file per modality, an empty copy of the index's trained
    parts (IVF: its coarse quantizer and codebooks, so they land in the lists a rebuild would
    use; Flat: an exact index) holding only them, and ``table`` into a new table part: the files
    already there are kept, not rewritten, so the cost follows the new rows. Searching merges
    every file's top-k (as for ``--shards``). Deltas are compacted (see ``compact``) when more
    than ``MAX_DELTAS`` pile up or they hold more than ``FOLD_SHARE`` of the base's rows.
    """
    import pyarrow as pa

    meta = json.loads(json.dumps(meta))
    shards, tables = {}, {}
    for modality, new in vectors.items():
        count = folder.count(modality)
        new = np.ascontiguousarray(new, dtype=np.float32)
        rows = table.set_column(table.column_names.index("id"), "id", pa.array(np.arange(count, count + len(new), dtype=np.int64)))
        _check_fits(folder, modality, rows)
        entries = folder.shards(modality)
        info = folder.meta["modalities"][modality]
        deltas = int(info.get("deltas", 0))
        base = entries[: len(entries) - deltas]
        delta = _filled(_empty_like(folder, base[-1], info.get("factory")), new, count)
        shards[modality], tables[modality], deltas = compact(folder, modality, base, entries[len(base):], delta, rows)
        meta["modalities"][modality].update(count=count + len(new), deltas=deltas)
    from avfeat.index.store import write_index

    return write_index(folder.path, meta, shards, tables)


MAX_DELTAS = 8  # more delta files than this per modality are merged into one
FOLD_SHARE = 0.2  # deltas holding more rows than this share of the base are folded into its last file


def compact(folder, modality: str, base: list, deltas: list, delta, rows) -> tuple[list, list, int]:
    """The modality's FAISS files and table parts once the new ``delta`` (a FAISS index) and its
    ``rows`` join the kept ``base`` and ``deltas`` entries, and how many files are deltas:

    - by default the delta is one more file and ``rows`` one more table part;
    - when the deltas would hold more than ``FOLD_SHARE`` of the base's rows, they are merged
      into the base's last file (its lists rebuilt with the same quantizer) and the table is
      written whole: a rewrite of that file, now and then, so searches probe one set of lists;
    - when there would be more than ``MAX_DELTAS`` deltas, they are merged into one delta file
      and one table part (cost: the deltas' rows, not the base's).

    Index types FAISS cannot merge (HNSW) keep their deltas as they are.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = folder.table_names(modality)
    if not _can_merge(delta):
        return [*base, *deltas, delta], [*names, rows], len(deltas) + 1
    base_rows = base[-1]["end"]
    delta_rows = sum(e["end"] - e["begin"] for e in deltas) + delta.ntotal
    if delta_rows > FOLD_SHARE * base_rows:
        merged = _merged([folder.read_shard(e) for e in (base[-1], *deltas)], delta)
        whole = pa.concat_tables([folder.table(modality), rows], promote_options="permissive")
        return [*base[:-1], merged], [whole], 0
    if len(deltas) + 1 > MAX_DELTAS:
        merged = _merged([folder.read_shard(e) for e in deltas], delta)
        parts = [pq.read_table(folder.path / name) for name in names[1:]]
        return [*base, merged], [names[0], pa.concat_tables([*parts, rows], promote_options="permissive")], 1
    return [*base, *deltas, delta], [*names, rows], len(deltas) + 1


def _can_merge(delta) -> bool:
    """Whether FAISS merges indexes of ``delta``'s type (tried on empty copies: cheap)."""
    import faiss

    empty = faiss.clone_index(delta)
    empty.reset()
    try:
        empty.merge_from(faiss.clone_index(empty), 0)
    except RuntimeError:
        return False
    return True


def _check_fits(folder, modality: str, rows) -> None:
    """Refuse new table rows whose metadata columns cannot join the table's (reading only the
    parts' schemas)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from avfeat.core.values import one_line

    try:
        schemas = [pq.read_schema(folder.path / name) for name in folder.table_names(modality)]
        pa.concat_tables([*(schema.empty_table() for schema in schemas), rows], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise SearchIndexError(
            f"the new videos' metadata does not fit the {modality} table of index {folder.path} ({one_line(error)}); "
            f"rebuild it with `avfeat index --overwrite`"
        ) from None
    except OSError as error:
        raise SearchIndexError(f"cannot read the {modality} table of index {folder.path}: {one_line(error)}; rebuild it") from None


def _empty_like(folder, entry: dict[str, Any], factory: str | None):
    """An empty index with the trained parts of the FAISS file ``entry`` (a CPU index)."""
    import faiss

    mapped = folder.read_shard(entry, mmap=True)  # maps the file: its lists are never read
    ivf = faiss.try_extract_index_ivf(mapped)
    if ivf is not None:  # the quantizer and codebooks, with empty lists of its own
        lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
        lists.this.disown()
        ivf.replace_invlists(lists, True)
        mapped.reset()
        return mapped
    inner = faiss.downcast_index(mapped.index) if isinstance(mapped, faiss.IndexIDMap2) else None
    if isinstance(inner, faiss.IndexFlat):  # of the same class, for merge_from
        return faiss.IndexIDMap2(faiss.IndexFlat(mapped.d, mapped.metric_type) if type(inner) is faiss.IndexFlat else type(inner)(mapped.d))
    try:  # HNSW: nothing trained, a fresh one is the same index
        fresh = faiss.index_factory(mapped.d, factory, mapped.metric_type) if factory else None
    except RuntimeError:
        fresh = None
    if fresh is not None and fresh.is_trained:
        return faiss.IndexIDMap2(fresh)  # as build_faiss wraps them
    loaded = folder.read_shard(entry, mmap=False)  # trained codebooks without lists (PQ): a copy emptied
    loaded.reset()
    return loaded


def _filled(empty, vectors: np.ndarray, first: int):
    """``empty`` holding ``vectors`` under ids ``first``, ``first + 1``, ... (added on the GPU
    when there is one); a CPU index."""
    work = to_gpu(empty)
    for start in range(0, len(vectors), ADD_BATCH):
        chunk = vectors[start : start + ADD_BATCH]
        work.add_with_ids(chunk, np.arange(first + start, first + start + len(chunk), dtype=np.int64))
    return to_cpu(work)


def _merged(indexes: list, delta):
    """``indexes`` (loaded CPU indexes sharing trained parts) and ``delta`` merged into the first, ids kept."""
    target = indexes[0]
    for other in (*indexes[1:], delta):
        target.merge_from(other, 0)
    return target
