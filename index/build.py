"""Building indexes: window vectors from cache + heads, the automatic FAISS choice, tuning.

The automatic choice (``choose_factory``), for N vectors of dimension D and a memory budget:

- ``Flat`` (exact inner product) when N < ``EXACT_LIMIT`` (100k) and N·D·4 bytes fit the
  budget: exact search is fast enough there and needs no tuning;
- ``IVF{nlist},Flat`` above that when the raw vectors fit the budget (nlist ≈ √N, a power of
  two), with ``nprobe`` tuned on a sample of real queries (the other modality's window vectors)
  to the smallest value reaching recall@10 ≥ 0.95 against exact search; when that takes half
  the lists or more (vectors without cluster structure), exact ``Flat`` is kept instead, being
  as fast and exact. IVF rather than HNSW
  because it builds several times faster on CPUs, costs 8 bytes per vector over the raw data
  rather than ~2·M·4, and one parameter trades speed for recall;
- ``IVF{nlist},PQ{m}`` when the raw vectors do not fit: m (bytes per vector) is the largest
  divisor of D whose codes fit the budget; nprobe is tuned the same way, and the recall reached
  (which quantisation may cap below the target) is recorded in meta.json.

A FAISS factory string (``--factory``) overrides the choice; IVF (``nprobe``) and HNSW
(``efSearch``) indexes are tuned the same way. faiss-gpu is used for training, adding and
searching when ``faiss.get_num_gpus() > 0``; indexes are always stored as CPU indexes.

``shards`` (``--shards N``) splits each modality into N contiguous ranges of rows: the index is
trained once and each shard is a copy of the trained empty index holding its range (see
``avfeat.index.shards``); tuning searches all shards together, as ``Searcher`` will.

``avfeat.index.update`` (``--update``) adds the videos a cache gained since the index was built.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avfeat.core.values import check_number
from avfeat.data.configs import TrainedOn
from avfeat.index.faiss_gpu import set_search_params, to_cpu, to_gpu
from avfeat.data.shards import compute_dtype
from avfeat.core.errors import InputError, SearchIndexError

EXACT_LIMIT = 100_000
ADD_BATCH = 1 << 18
TARGET_RECALL = 0.95
TUNE_QUERIES = 1000
RECALL_K = 10

log = logging.getLogger(__name__)



def default_memory_budget() -> int:
    """Half the machine's physical memory: room for the index and the process around it."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def ivf_lists(n: int) -> int:
    return int(2 ** round(math.log2(max(16.0, math.sqrt(n)))))


def choose_factory(n: int, dim: int, memory_budget: int | None = None) -> str:
    """The automatic index choice for ``n`` vectors of ``dim`` (see the module docstring)."""
    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    raw = n * dim * 4
    if n < EXACT_LIMIT and raw <= budget:
        return "Flat"
    nlist = ivf_lists(n)
    if raw + n * 8 <= budget:
        return f"IVF{nlist},Flat"
    for m in sorted((m for m in range(1, dim + 1) if dim % m == 0), reverse=True):
        if m <= dim // 2 and n * (m + 8) + nlist * dim * 4 <= budget:
            return f"IVF{nlist},PQ{m}"
    raise SearchIndexError(f"{n} vectors of {dim} dims do not fit a memory budget of {budget / 2**20:.0f} MB even as IVF-PQ")


def _tunable(index) -> tuple[str | None, list[int]]:
    """The speed/recall knob of an index and the values to try, smallest first."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index) if hasattr(faiss, "try_extract_index_ivf") else None
    if ivf is not None:
        values = [2**i for i in range(0, int(math.log2(ivf.nlist)) + 1)]
        return "nprobe", values if values[-1] == ivf.nlist else values + [ivf.nlist]
    if "HNSW" in type(faiss.downcast_index(getattr(index, "index", index))).__name__:
        return "efSearch", [16, 32, 64, 128, 256, 512, 1024, 2048]
    return None, []


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k found in its approximate top-k."""
    k = exact.shape[1]
    return float(np.mean([len(set(f[:k]) & set(e)) / k for f, e in zip(found, exact)]))


@dataclass
class BuiltIndex:
    shards: list[Any]  # CPU faiss indexes over contiguous ranges of rows, in order; ids = row numbers
    factory: str
    params: dict[str, Any] = field(default_factory=dict)
    recall_at_10: float | None = None  # against exact search on the tuning queries; None for Flat
    build_seconds: float = 0.0

    @property
    def index(self):
        """All shards as one CPU index (the shard itself when there is one)."""
        from avfeat.index.shards import combine

        return combine(self.shards)

    def describe(self) -> dict[str, Any]:
        return {"factory": self.factory, "params": self.params, "recall_at_10": self.recall_at_10, "build_seconds": round(self.build_seconds, 3)}


def build_faiss(
    vectors: np.ndarray,
    factory: str | None = None,
    queries: np.ndarray | None = None,
    memory_budget: int | None = None,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
    shards: int = 1,
) -> BuiltIndex:
    """A FAISS inner-product index over ``vectors`` (ids = row numbers), tuned on ``queries``,
    in ``shards`` pieces over contiguous ranges of rows.

    ``queries`` (default: a sample of ``vectors``) should look like real queries: for a
    cross-modal index, the other modality's vectors.
    """
    import faiss

    from avfeat.index.shards import place, shard_ranges

    started = time.perf_counter()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    ranges = shard_ranges(n, shards)
    automatic = factory is None
    factory = factory or choose_factory(n, dim, memory_budget)
    log.info("index %s for %d vectors of dimension %d (%s)", factory, n, dim, "chosen from the size" if automatic else "--factory")
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise InputError(f"FAISS cannot build --factory {factory!r}: {str(error).strip().splitlines()[-1]}") from None
    if faiss.try_extract_index_ivf(index) is None:
        index = faiss.IndexIDMap2(index)  # Flat and HNSW store no ids of their own
    rng = np.random.default_rng(seed)
    if not index.is_trained:
        nlist = getattr(faiss.try_extract_index_ivf(index), "nlist", 1)
        sample = max(64 * nlist, 10_000)
        train = vectors if n <= sample else vectors[np.sort(rng.choice(n, sample, replace=False))]
        if len(train) < nlist:
            raise InputError(f"{factory} needs at least {nlist} vectors to train, the collection has {n}")
        work = to_gpu(index)
        work.train(train)
        index = to_cpu(work)
    built = BuiltIndex(shards=fill_shards(index, vectors, ranges), factory=factory)

    knob, values = _tunable(index)
    if knob is not None and n > 0:
        work = place(built.shards)
        if queries is None or len(queries) == 0:
            queries = vectors
        queries = np.ascontiguousarray(queries[rng.choice(len(queries), min(len(queries), TUNE_QUERIES), replace=False)], dtype=np.float32)
        k = min(RECALL_K, n)
        exact = faiss.IndexFlatIP(dim)
        exact.add(vectors)
        _, truth = exact.search(queries, k)
        best = (-1.0, values[-1])
        for value in values:
            set_search_params(work, {knob: value})
            _, found = work.search(queries, k)
            recall = recall_at_k(found, truth)
            if recall > best[0]:
                best = (recall, value)
            if recall >= target_recall:
                best = (recall, value)
                break
        built.params, built.recall_at_10 = {knob: best[1]}, best[0]
        for shard in built.shards:  # stored in each file, so every shard searches alike
            set_search_params(shard, built.params)
        if automatic and knob == "nprobe" and factory.endswith(",Flat") and best[1] * 2 >= values[-1]:
            # Reaching the target needs half the lists or more (data without cluster structure,
            # such as random vectors): exact search is then as fast and exact.
            built = BuiltIndex(shards=fill_shards(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), vectors, ranges), factory="Flat")
    built.build_seconds = time.perf_counter() - started
    return built


def fill_shards(empty, vectors: np.ndarray, ranges: list[tuple[int, int]]) -> list:
    """One copy of the trained ``empty`` index per [begin, end) range, holding those rows under
    their global ids (adding on the GPU when there is one); CPU indexes."""
    import faiss

    shards = []
    for begin, end in ranges:
        work = to_gpu(faiss.clone_index(empty))
        for start in range(begin, end, ADD_BATCH):
            stop = min(end, start + ADD_BATCH)
            work.add_with_ids(vectors[start:stop], np.arange(start, stop, dtype=np.int64))
        shards.append(to_cpu(work))
    return shards


# ---- window vectors of a whole cache --------------------------------------------------------


def embed_cache(cache, heads, geometry, hop: float | None, aggregation: str, quiet: bool = True, records=None, label: str = "index"):
    """(windows, audio vectors (n, dim), visual vectors (n, dim)) for every ok video of the
    cache, or only for ``records`` (`--update`: the videos not yet indexed); ``label`` names the
    command on the progress bar."""
    import torch
    from tqdm import tqdm

    from avfeat.index.vectors import audio_window_vectors, frame_summaries, project_audio, visual_window_vectors
    from avfeat.align.windows import video_windows

    windows, audio_vecs, visual_vecs = [], [], []
    records = cache.records(status="ok") if records is None else records
    for record in tqdm(records, desc=label, unit="video", disable=quiet, dynamic_ncols=True):
        video = video_windows(record, cache.frame_times(record), geometry, hop)
        if not video:
            continue
        last_audio = max(w.audio for w in video) + geometry.audio_tokens
        audio = project_audio(heads, cache.read_audio(record, 0, last_audio))
        summaries = frame_summaries(heads, cache.read_frames(record))
        windows.extend(video)
        audio_vecs.append(audio_window_vectors(audio, video, geometry))
        visual_vecs.append(visual_window_vectors(summaries, video, geometry, aggregation))
    dim = heads.config.dim
    audio = torch.cat(audio_vecs).numpy() if audio_vecs else np.zeros((0, dim), np.float32)
    visual = torch.cat(visual_vecs).numpy() if visual_vecs else np.zeros((0, dim), np.float32)
    return windows, audio, visual


def _typed_column(values: list):
    """A metadata column as pyarrow types it (all None: a null column); values of mixed types
    that pyarrow cannot unify (e.g. str and int) become text rather than fail the index."""
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def window_table(windows, records, first_id: int = 0):
    """The table of ``windows`` (ids from ``first_id``): id, video_id, path, start, end, then
    every metadata column of ``records`` (the videos' input-table columns: label, split, ...),
    typed, null where a video lacks it."""
    import pyarrow as pa

    from avfeat.index.store import TABLE_COLUMNS

    by_id = {record.video_id: record for record in records}
    videos = list(by_id.values())
    position = {video_id: row for row, video_id in enumerate(by_id)}
    rows = pa.array([position[w.video_id] for w in windows], pa.int64())  # window → its video
    table = pa.table(
        {
            "id": pa.array(np.arange(first_id, first_id + len(windows), dtype=np.int64)),
            "video_id": pa.array([w.video_id for w in windows], pa.string()),
            "path": pa.array([by_id[w.video_id].path for w in windows], pa.string()),
            "start": pa.array([w.start for w in windows], pa.float64()),
            "end": pa.array([w.end for w in windows], pa.float64()),
        }
    )
    for name in dict.fromkeys(key for record in videos for key in record.metadata):
        if name in TABLE_COLUMNS:
            continue  # extraction reserves these names; a window's own start/end win
        per_video = _typed_column([record.metadata.get(name) for record in videos])
        table = table.append_column(name, per_video.take(rows))
    return table


def videos_fingerprint(records) -> str:
    """A short hash of the cache records of the indexed videos (as ``Cache.fingerprint`` hashes
    all of them): `--update` compares it to find indexed videos whose tokens changed since."""
    import hashlib

    digest = hashlib.sha1()
    for record in sorted(records, key=lambda r: r.video_id):
        digest.update(f"{record.video_id}|{record.status}|{record.shard}|{record.audio_offset}|{record.audio_length}|"
                      f"{record.visual_offset}|{record.visual_length}\n".encode())
    return digest.hexdigest()[:16]


def build_index(
    cache,
    checkpoint,
    out: str | os.PathLike,
    window: float | None = None,
    hop: float | None = None,
    factory: str | None = None,
    memory_budget: int | None = None,
    quiet: bool = True,
    shards: int = 1,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Project every window of ``cache`` through ``checkpoint``'s heads and write the index
    folder ``out`` (see ``avfeat.index.store``), each modality in ``shards`` files. Returns its
    meta.json contents. An existing index is replaced (atomically) only with ``overwrite``.

    One writer at a time: the lock sits beside the folder (``OUT.avfeat-lock``), where earlier
    versions (which swapped the whole folder by renames) put it too, so writers of either
    exclude each other."""
    from avfeat.core.lock import writer_lock

    with writer_lock(out, "index", beside=True):
        return _build_index(cache, checkpoint, out, window, hop, factory, memory_budget, quiet, shards, overwrite)


def _build_index(cache, checkpoint, out, window, hop, factory, memory_budget, quiet, shards, overwrite) -> dict[str, Any]:
    from avfeat.core.outputs import prepare_output, refuse_inside
    from avfeat.index.store import KIND, META_FILE, META_MARKS, is_unfinished

    # A folder whose first write crashed before its meta.json holds no index to protect, only
    # avfeat's own leftovers: it is written again without --overwrite. write_index creates the
    # folder (with its marker) and removes only avfeat's own files once the new index is in.
    refuse_inside(out, [(cache.layout.root, "cache"), (checkpoint.path, "heads")])
    if not is_unfinished(out):
        prepare_output(out, marker=META_FILE, kind=KIND, overwrite=overwrite, can_resume=False, create=False, marker_keys=META_MARKS)
    from avfeat import __version__
    from avfeat.align.windows import WindowGeometry
    from avfeat.index.shards import check_count
    from avfeat.index.store import write_index
    from avfeat.index.hits import AUDIO, VISUAL

    check_count(shards)  # before the embedding, which can take long
    checkpoint.check_cache(cache)
    window = float(window if window is not None else checkpoint.window)
    hop = float(hop if hop is not None else checkpoint.hop)
    check_number("--window", window)
    check_number("--hop", hop)
    geometry = WindowGeometry.for_cache(cache, window)
    windows, audio, visual = embed_cache(cache, checkpoint.heads, geometry, hop, checkpoint.aggregation, quiet)
    if not windows:
        raise SearchIndexError(f"cache {cache.layout.root} has no video long enough for one {window:g} s window")
    records = cache.records(status="ok")
    table = window_table(windows, records)
    indexed = {w.video_id for w in windows}
    # Each index is tuned with the queries it will serve: the other modality's vectors.
    built = {
        AUDIO: build_faiss(audio, factory, queries=visual, memory_budget=memory_budget, shards=shards),
        VISUAL: build_faiss(visual, factory, queries=audio, memory_budget=memory_budget, shards=shards),
    }
    meta = {
        "avfeat_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dim": int(audio.shape[1]),
        "window": window,
        "hop": hop,
        "aggregation": checkpoint.aggregation,
        "geometry": {"audio_tokens": geometry.audio_tokens, "frames": geometry.frames, "fps": geometry.fps, "audio_rate": geometry.audio_rate},
        # Queries compute their tokens as the cache's were (models, decode mode, dtype, pooling).
        "cache": TrainedOn.of(
            cache.config, str(Path(cache.layout.root).resolve()), cache.fingerprint(), compute_dtype(cache.layout),
            videos_fingerprint=videos_fingerprint(r for r in records if r.video_id in indexed),
        ).to_dict(),
        "heads": {"path": str(Path(checkpoint.path).resolve()), "fingerprint": checkpoint.fingerprint, "trained_on_cache": checkpoint.cache_fingerprint},
        "videos": len(indexed),
        "modalities": {m: {"count": len(table), **b.describe()} for m, b in built.items()},
    }
    return write_index(out, meta, {m: b.shards for m, b in built.items()}, {m: table for m in built})
