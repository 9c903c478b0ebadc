"""Search benchmark (prints, never asserts).

1. The automatically chosen FAISS index at ``--n`` random unit vectors (default 1M x 256) and at
   a synthetic corpus's size (``--small-n``): build time, queries/s batched and one at a time,
   recall@10 against exact search. autofaiss, when it is installed, runs beside it under the
   same memory budget and the ratios are printed.
2. Seconds `sync` takes on a 10-minute video whose tokens are cached (real backbone sizes:
   HuBERT-base 768-d at 50 Hz, DINOv2-small 257 x 384-d tokens per frame at ``--fps``).

faiss-gpu is used for the indexes when it sees a GPU.

    python benchmarks/search.py                 # ~4 min on 2 CPU cores
    python benchmarks/search.py --n 200000      # quicker
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def measure(index, queries: np.ndarray, truth: np.ndarray, single: int) -> dict:
    from avfeat.index.build import recall_at_k

    started = time.perf_counter()
    _, found = index.search(queries, 10)
    batched = len(queries) / (time.perf_counter() - started)
    started = time.perf_counter()
    for q in queries[:single]:
        index.search(q[None], 10)
    one = single / (time.perf_counter() - started)
    return {"qps_batched": batched, "qps_single": one, "recall@10": recall_at_k(found, truth)}


def run_autofaiss(vectors: np.ndarray, budget: int):
    try:
        from autofaiss import build_index
    except ImportError as error:
        return None, f"not available ({type(error).__name__}: {error})"
    started = time.perf_counter()
    index, _ = build_index(
        embeddings=vectors, save_on_disk=False, metric_type="ip", max_index_memory_usage=f"{budget // 2**20}MB",
        current_memory_available=f"{max(budget, 2**30) // 2**20}MB", min_nearest_neighbors_to_retrieve=10, verbose=30,
    )
    return index, time.perf_counter() - started


def bench_index(n: int, dim: int, queries: int, budget: int | None, single: int) -> None:
    import faiss

    from avfeat.index.build import build_faiss, default_memory_budget

    budget = budget or default_memory_budget()
    vectors, q = unit(n, dim, 0), unit(queries, dim, 1)
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    started = time.perf_counter()
    _, truth = exact.search(q, 10)
    exact_seconds = time.perf_counter() - started
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
    from avfeat.data.cache import Cache, ShardWriter, empty_row, open_for_writing
    from avfeat.index.sync import sync_cached

    seconds = minutes * 60
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((int(seconds * 50), 768), dtype=np.float32).astype(np.float16)
    frames = int(seconds * fps)
    with tempfile.TemporaryDirectory() as root:
        config = {"audio_model": "random:hubert-base", "visual_model": "random:dinov2-small", "audio_layer": -1, "visual_layer": -1,
                  "fps": fps, "audio_token_rate": 50.0, "audio_dim": 768, "visual_dim": 384}
        layout = open_for_writing(root, config)
        writer = ShardWriter(layout, 0, audio_dim=768, visual_tokens_per_frame=257, visual_dim=384, attrs={})
        row = dict(empty_row("long", "long.mp4", 0, 0.0), duration=seconds, audio_rate=50.0, fps=fps)
        visual = np.concatenate([rng.standard_normal((min(64, frames - i), 257, 384), dtype=np.float32).astype(np.float16) for i in range(0, frames, 64)])
        writer.add(row, audio, visual, np.arange(frames) / fps)
        writer.commit()
        heads = AVHeads(HeadConfig(audio_dim=768, visual_dim=384, dim=256)).eval()
        cache = Cache(root)
        torch.set_num_threads(torch.get_num_threads())
        started = time.perf_counter()
        result = sync_cached(cache, "long", heads, max_offset=2.0)
        elapsed = time.perf_counter() - started
        cache.close()
    print(f"\n== sync on cached tokens: {minutes:g}-minute video, {fps:g} fps, ±2 s in 20 ms steps ({len(result.lags)} lags) ==")
    print(f"{elapsed:.2f} s (reading the cache, projecting, scoring)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the large run")
    parser.add_argument("--small-n", type=int, default=2_400, help="vectors in the corpus-sized run (the demo corpus: 24 videos x 6 s, windows every 0.2 s)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--memory-budget", default=None, help="e.g. 4GB (default: half the machine's memory)")
    parser.add_argument("--sync-minutes", type=float, default=10.0)
    parser.add_argument("--sync-fps", type=float, default=1.0)
    args = parser.parse_args()
    from avfeat.index.build import parse_size

    budget = parse_size(args.memory_budget) if args.memory_budget else None
    for n in (args.small_n, args.n):
        bench_index(n, args.dim, args.queries, budget, args.single)
    bench_sync(args.sync_minutes, args.sync_fps)


if __name__ == "__main__":
    main()
