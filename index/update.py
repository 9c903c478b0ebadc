"""Adding videos to an existing index (`avfeat index --update`).

``update_index`` adds the videos a cache gained since the index was built to the index's last
file, with its trained parts and tuned parameters as they are: the IVF lists were trained on the
old vectors, which stay a fair sample of the collection while the additions are small; after
large growth (say, half the collection again) a rebuild re-balances the lists.
"""

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
    from avfeat.index.vectors import AUDIO

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
    from avfeat.index.vectors import AUDIO, VISUAL

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

    The vectors go into the last FAISS file of the modality, with its trained quantizer and
    codebooks (an IVF index assigns them to its lists as it would have at build time); the
    other files are kept, not rewritten. ``table`` is appended to the modality's table
    (metadata columns one side lacks are null on that side).
    """
    import pyarrow as pa

    from avfeat.core.values import one_line
    from avfeat.index.store import write_index

    meta = json.loads(json.dumps(meta))
    shards, tables = {}, {}
    for modality, new in vectors.items():
        count = folder.count(modality)
        new = np.ascontiguousarray(new, dtype=np.float32)
        entries = folder.shards(modality)
        work = to_gpu(folder.read_shard(entries[-1], mmap=False))  # loaded: a mapped index cannot grow
        for start in range(0, len(new), ADD_BATCH):
            chunk = new[start : start + ADD_BATCH]
            work.add_with_ids(chunk, np.arange(count + start, count + start + len(chunk), dtype=np.int64))
        shards[modality] = [*entries[:-1], to_cpu(work)]
        rows = table.set_column(table.column_names.index("id"), "id", pa.array(np.arange(count, count + len(new), dtype=np.int64)))
        try:
            tables[modality] = pa.concat_tables([folder.table(modality), rows], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise SearchIndexError(
                f"the new videos' metadata does not fit the {modality} table of index {folder.path} ({one_line(error)}); "
                f"rebuild it with `avfeat index --overwrite`"
            ) from None
        meta["modalities"][modality]["count"] = count + len(new)
    return write_index(folder.path, meta, shards, tables)
