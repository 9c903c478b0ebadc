"""Search benchmark (prints, never asserts).

1. The automatically chosen FAISS index at ``--n`` random unit vectors (default 1M x 256) and at
   a synthetic corpus's size (``--small-n``): build time, queries/s batched and one at a time,
   recall@10 against exact search. autofaiss, when it is installed, runs beside it under the
   same memory budget and the ratios are printed.
2. Seconds `sync` takes on a 10-minute video whose tokens are cached (real backbone sizes:
   HuBERT-base 768-d at 50 Hz, DINOv2-small 257 x 384-d tokens per frame at ``--fps``).
3. ``--shards``: an IVF index over ``--shard-n`` clustered random unit vectors built as one file
   and as ``--shards`` shards (trained once), each opened by a fresh process loaded or
   memory-mapped (warm page cache, then with the shard files evicted from it): resident memory
   of the searching process (private and file-backed pages), queries/s, and whether the hits
   equal the one-file index's.

faiss-gpu is used for the indexes when it sees a GPU.

    python benchmarks/search.py                 # ~5 min on 2 CPU cores
    python benchmarks/search.py --n 200000      # quicker
    python benchmarks/search.py --only shards   # section 3 alone, ~1 min
    python benchmarks/search.py --smoke         # every section at toy sizes: does it run?
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from _bench import parse, parser, timed


def unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def measure(index, queries: np.ndarray, truth: np.ndarray, single: int) -> dict:
    from avfeat.index.build import recall_at_k

    batched, one, _, found = query_rates(index, queries, single)
    return {"qps_batched": batched, "qps_single": one, "recall@10": recall_at_k(found, truth)}


def query_rates(index, queries: np.ndarray, single: int):
    """Queries/s batched and one at a time (the first ``single`` queries), and the batched
    search's (scores, ids) for the top 10."""
    seconds, (scores, ids) = timed(lambda: index.search(queries, 10))
    one, _ = timed(lambda: [index.search(q[None], 10) for q in queries[:single]])
    return len(queries) / seconds, single / one, scores, ids


def run_autofaiss(vectors: np.ndarray, budget: int):
    try:
        from autofaiss import build_index
    except ImportError as error:
        return None, f"not available ({type(error).__name__}: {error})"
    seconds, (index, _) = timed(lambda: build_index(
        embeddings=vectors, save_on_disk=False, metric_type="ip", max_index_memory_usage=f"{budget // 2**20}MB",
        current_memory_available=f"{max(budget, 2**30) // 2**20}MB", min_nearest_neighbors_to_retrieve=10, verbose=30,
    ))
    return index, seconds


def bench_index(n: int, dim: int, queries: int, budget: int | None, single: int) -> None:
    import faiss

    from avfeat.index.build import build_faiss, default_memory_budget

    budget = budget or default_memory_budget()
    vectors, q = unit(n, dim, 0), unit(queries, dim, 1)
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    exact_seconds, (_, truth) = timed(lambda: exact.search(q, 10))
    built = build_faiss(vectors, queries=unit(1000, dim, 2), memory_budget=budget)
    ours = measure(built.index, q, truth, single)
    print(f"\n== {n:,} random unit vectors, dim {dim}, {queries} queries, memory budget {budget / 2**30:.1f} GiB, GPUs {faiss.get_num_gpus()} ==")
    print(f"exact (Flat IP) batched: {queries / exact_seconds:,.0f} queries/s")
    print(f"{'index':<28} {'build s':>8} {'q/s batched':>12} {'q/s single':>11} {'recall@10':>9}")
    label = f"avfeat {built.factory} {' '.join(f'{k}={v}' for k, v in built.params.items())}"
    print(f"{label:<28} {built.build_seconds:>8.1f} {ours['qps_batched']:>12,.0f} {ours['qps_single']:>11,.0f} {ours['recall@10']:>9.3f}")
    index, seconds = run_autofaiss(vectors, budget)
    if index is None:
        print(f"autofaiss: {seconds}")
        return
    theirs = measure(index, q, truth, single)
    print(f"{'autofaiss':<28} {seconds:>8.1f} {theirs['qps_batched']:>12,.0f} {theirs['qps_single']:>11,.0f} {theirs['recall@10']:>9.3f}")
    print(
        f"ratios avfeat/autofaiss: build time {built.build_seconds / seconds:.2f}, q/s batched {ours['qps_batched'] / theirs['qps_batched']:.2f}, "
        f"q/s single {ours['qps_single'] / theirs['qps_single']:.2f}, recall {ours['recall@10'] / max(theirs['recall@10'], 1e-9):.2f}"
    )


def bench_sync(minutes: float, fps: float) -> None:
    """Write a one-video cache of random tokens at real model sizes, then time sync_cached."""
    import torch

    from avfeat.align.heads import AVHeads, HeadConfig
    from avfeat.data.cache import Cache
    from avfeat.data.shards import ShardWriter, new_record, open_for_writing
    from avfeat.index.sync import sync_cached

    seconds = minutes * 60
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((int(seconds * 50), 768), dtype=np.float32).astype(np.float16)
    frames = int(seconds * fps)
    with tempfile.TemporaryDirectory() as root:
        config = {"audio_model": "random:hubert-base", "visual_model": "random:dinov2-small", "audio_layer": -1, "visual_layer": -1,
                  "fps": fps, "audio_token_rate": 50.0, "audio_dim": 768, "visual_dim": 384, "visual_tokens": 257}
        layout = open_for_writing(root, config)
        record = new_record("long", "long.mp4", 0, 0.0).with_(duration=seconds, audio_rate=50.0, fps=fps)
        visual = np.concatenate([rng.standard_normal((min(64, frames - i), 257, 384), dtype=np.float32).astype(np.float16) for i in range(0, frames, 64)])
        with ShardWriter(layout, 0, audio_dim=768, visual_tokens_per_frame=257, visual_dim=384, attrs={}) as writer:
            writer.add(record, audio, visual, np.arange(frames) / fps)
        heads = AVHeads(HeadConfig(audio_dim=768, visual_dim=384, dim=256)).eval()
        cache = Cache(root)
        torch.set_num_threads(torch.get_num_threads())
        elapsed, result = timed(lambda: sync_cached(cache, "long", heads, max_offset=2.0))
        cache.close()
    print(f"\n== sync on cached tokens: {minutes:g}-minute video, {fps:g} fps, ±2 s in 20 ms steps ({len(result.lags)} lags) ==")
    print(f"{elapsed:.2f} s (reading the cache, projecting, scoring)")


def clustered(n: int, dim: int, seed: int, centres: int = 5000) -> np.ndarray:
    """Unit vectors around random centres: data with the cluster structure IVF relies on."""
    rng = np.random.default_rng(seed)
    middle = np.random.default_rng(99).standard_normal((centres, dim), dtype=np.float32)
    x = middle[rng.integers(centres, size=n)] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def resident_mib() -> dict[str, float]:
    """This process's resident memory in MiB: private pages (RssAnon) and mapped file pages (RssFile)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def open_and_search(folder: str, mmap: bool, queries: np.ndarray, single: int) -> dict:
    """Run in a fresh process: open the audio index of ``folder`` as `avfeat search` would, search."""
    import faiss  # noqa: F401  (the library's own pages are not the index's)

    from avfeat.index.store import IndexFolder

    base = resident_mib()
    load, index = timed(lambda: IndexFolder(folder, mmap=mmap).faiss_index("audio"))
    loaded = resident_mib()
    batched, one, scores, ids = query_rates(index, queries, single)
    searched = resident_mib()
    grow = {f"{when}_{kind}": after[kind] - base[kind] for when, after in (("load", loaded), ("search", searched)) for kind in base}
    return {"load_s": load, "qps_batched": batched, "qps_single": one, "ids": ids, "scores": scores, **grow}


def evict(folder: Path) -> None:
    """Drop the index files' pages from the page cache, so mapped reads go to the disk."""
    for path in folder.glob("*.faiss"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def bench_shards(n: int, dim: int, shards: int, queries: int, single: int) -> None:
    import faiss
    import pyarrow as pa

    from avfeat.index.build import build_faiss, ivf_lists, recall_at_k
    from avfeat.index.store import write_index

    factory = f"IVF{ivf_lists(n)},Flat"  # what the automatic choice takes at this size
    vectors, q = clustered(n, dim, 0), clustered(queries, dim, 1)
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    _, truth = exact.search(q, 10)
    del exact
    table = pa.table({"id": np.arange(n, dtype=np.int64)})
    rows = []
    with tempfile.TemporaryDirectory() as root:
        folders = {}
        for count in (1, shards):
            built = build_faiss(vectors, factory, queries=clustered(1000, dim, 2), shards=count)
            # No cache or heads here, but IndexFolder requires their fingerprints in meta.json.
            meta = {"modalities": {"audio": {"count": n, **built.describe()}}, "cache": {"fingerprint": "-"}, "heads": {"fingerprint": "-"}}
            folders[count] = Path(root) / f"shards{count}"
            write_index(folders[count], meta, {"audio": built.shards}, {"audio": table})
            size = sum(p.stat().st_size for p in folders[count].glob("*.faiss"))
            print(f"built {count} file(s) in {built.build_seconds:.1f} s, {built.params}, {size / 2**20:.0f} MiB on disk")
            del built
        del vectors
        runs = [("1 file, loaded", folders[1], False, False), (f"{shards} shards, loaded", folders[shards], False, False),
                (f"{shards} shards, mmap (warm)", folders[shards], True, False), (f"{shards} shards, mmap (cold)", folders[shards], True, True)]
        for label, folder, mmap, cold in runs:
            if cold:
                evict(folder)
            # A fresh process per run, so resident memory is this index's alone.
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                rows.append((label, pool.submit(open_and_search, str(folder), mmap, q, single).result()))
    reference = rows[0][1]
    print(f"\n== {factory} over {n:,} clustered unit vectors, dim {dim} (raw {n * dim * 4 / 2**20:.0f} MiB, "
          f"+{n * 8 / 2**20:.1f} MiB ids), {queries} queries, GPUs {faiss.get_num_gpus()} ==")
    print(f"{'':<24} {'load s':>7} {'RSS MiB after load':>19} {'after search':>13} {'q/s batched':>12} {'q/s single':>11} {'recall@10':>9} {'same hits':>9}")
    print(f"{'':<24} {'':>7} {'private / file':>19} {'priv. / file':>13}")
    for label, r in rows:
        same = np.array_equal(r["ids"], reference["ids"]) and np.array_equal(r["scores"], reference["scores"])
        print(
            f"{label:<24} {r['load_s']:>7.2f} {r['load_RssAnon']:>9.0f} / {r['load_RssFile']:<7.0f} {r['search_RssAnon']:>5.0f} / {r['search_RssFile']:<5.0f} "
            f"{r['qps_batched']:>12,.0f} {r['qps_single']:>11,.0f} {recall_at_k(r['ids'], truth):>9.3f} {str(same):>9}"
        )


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--n", type=int, default=1_000_000, help="vectors in the large run")
    options.add_argument("--small-n", type=int, default=2_400, help="vectors in the corpus-sized run (the demo corpus: 24 videos x 6 s, windows every 0.2 s)")
    options.add_argument("--dim", type=int, default=256)
    options.add_argument("--queries", type=int, default=1000)
    options.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    options.add_argument("--memory-budget", default=None, help="e.g. 4GB (default: half the machine's memory)")
    options.add_argument("--sync-minutes", type=float, default=10.0)
    options.add_argument("--sync-fps", type=float, default=1.0)
    options.add_argument("--shards", type=int, default=4, help="shards in section 3")
    options.add_argument("--shard-n", type=int, default=400_000, help="vectors in section 3")
    options.add_argument("--shard-dim", type=int, default=128)
    options.add_argument("--only", choices=["index", "sync", "shards"], help="run one section")
    # --smoke: the large run just over the size where the automatic choice leaves exact search.
    args = parse(options, smoke=dict(n=100_000, small_n=500, dim=16, queries=100, single=10, sync_minutes=0.1,
                                     shards=2, shard_n=20_000, shard_dim=16))
    from avfeat.core.values import parse_size

    budget = parse_size(args.memory_budget) if args.memory_budget else None
    if args.only in (None, "index"):
        for n in (args.small_n, args.n):
            bench_index(n, args.dim, args.queries, budget, args.single)
    if args.only in (None, "sync"):
        bench_sync(args.sync_minutes, args.sync_fps)
    if args.only in (None, "shards"):
        bench_shards(args.shard_n, args.shard_dim, args.shards, args.queries, args.single)


if __name__ == "__main__":
    main()
