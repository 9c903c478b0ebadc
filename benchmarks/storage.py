"""Compact token storage: bytes, fidelity and read speed of `avfeat extract --storage` and
`--pool-patches` (README "Compact storage").

Prints figures; asserts nothing. One synthetic corpus is extracted four times with the tiny
random backbones (float16, int8, pool 2, int8 + pool 2) and for each it reports:

- bytes per media-hour measured from the shard files, and the token payload alone (a small
  corpus's files are mostly HDF5 chunk padding: the last chunk of each dataset is stored whole);
- the same figure computed for the defaults' geometry (HuBERT-base 768-d at 50 Hz, DINOv2-small
  257 x 384 at 1 fps), int8 scales (4 bytes per token) included;
- per-token cosine of what readers get against the float16 cache (pooled configs against the
  float16 tokens pooled the same way);
- read throughput through ``Cache.read_windows`` (shuffled batches of 32 windows of 1.5 s, page
  cache warm): windows/s and MB/s of float tokens delivered;
- with ``--recall``: class R@1 of max-mean heads trained on each (the align acceptance recipe,
  one seed, so differences of a few queries are noise).

    python benchmarks/storage.py
    python benchmarks/storage.py --videos 60 --recall
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = {  # name: extract flags
    "float16": [],
    "int8": ["--storage", "int8"],
    "pool 2": ["--pool-patches", "2"],
    "int8 + pool 2": ["--storage", "int8", "--pool-patches", "2"],
}

# The defaults' geometry: HuBERT-base and DINOv2-small (224 crop, 16 x 16 patches of 14 px).
DEFAULT_GEOMETRY = dict(audio_rate=50.0, audio_dim=768, fps=1.0, patches=256, visual_dim=384)


def bytes_per_hour(audio_rate, audio_dim, fps, patches, visual_dim, storage="float16", pool=1) -> float:
    """Token bytes one media-hour takes: tokens x (dim x bytes per value + the int8 scale)."""
    tokens = 1 + patches // (pool * pool)
    per_value, per_token = (1, 4) if storage == "int8" else (2, 0)
    audio = audio_rate * 3600 * (audio_dim * per_value + per_token)
    visual = fps * 3600 * tokens * (visual_dim * per_value + per_token)
    return audio + visual


def payload(root: Path) -> int:
    import h5py

    total = 0
    for shard in (root / "shards").glob("*.h5"):
        with h5py.File(shard, "r") as handle:
            for name in ("audio/tokens", "visual/tokens", "audio/scale", "visual/scale", "visual/times"):
                if name in handle:
                    total += handle[name].size * handle[name].dtype.itemsize
    return total


def cosines(cache, reference, pool: int) -> tuple[float, float, float, float]:
    """(audio mean, audio min, visual mean, visual min) per-token cosine against ``reference``."""
    from avfeat.extract.encoder import pool_patch_tokens

    grid = reference.config["visual_grid"]
    found = {"audio": [], "visual": []}
    for record in reference.records(status="ok"):
        for side, mine, theirs in (("audio", cache.audio_tokens(record.video_id), reference.audio_tokens(record.video_id)),
                                   ("visual", cache.visual_tokens(record.video_id), reference.visual_tokens(record.video_id))):
            theirs = theirs.astype(np.float64)
            if side == "visual":
                theirs = pool_patch_tokens(theirs.astype(np.float32), grid, pool).astype(np.float64)
            mine = mine.astype(np.float64)
            found[side].append((mine * theirs).sum(-1) / (np.linalg.norm(mine, axis=-1) * np.linalg.norm(theirs, axis=-1)))
    a, v = np.concatenate(found["audio"]).ravel(), np.concatenate(found["visual"]).ravel()
    return float(a.mean()), float(a.min()), float(v.mean()), float(v.min())


def read_speed(path: Path, seconds: float = 1.5, batch: int = 32, passes: int = 3) -> tuple[float, float]:
    """(windows/s, MB/s of float tokens delivered) through Cache.read_windows, shuffled batches."""
    from avfeat.align.windows import WindowGeometry, cache_windows
    from avfeat.data.cache import Cache

    with Cache(path) as cache:
        geometry = WindowGeometry.for_cache(cache, seconds)
        windows = cache_windows(cache, geometry)
        order = list(windows)
        random.Random(0).shuffle(order)
        batches = [order[i : i + batch] for i in range(0, len(order), batch)]
        for chunk in batches:  # warm: the page cache holds the shards, handles are open
            cache.read_windows(chunk, geometry)
        count = delivered = 0
        started = time.perf_counter()
        for _ in range(passes):
            for chunk in batches:
                audio, visual = cache.read_windows(chunk, geometry)
                count += len(chunk)
                delivered += audio.nbytes + visual.nbytes
        elapsed = time.perf_counter() - started
    return count / elapsed, delivered / elapsed / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--recall", action="store_true", help="also train heads on each cache (align recipe, seed 0) and print class R@1")
    parser.add_argument("--work", type=Path, default=None, help="folder to keep the corpus and caches in [default: a temp folder]")
    args = parser.parse_args()

    from avfeat.data.cache import Cache
    from avfeat.data.synth import make_corpus
    from avfeat.testing import TINY_MODELS, run_avfeat

    work = args.work or Path(tempfile.mkdtemp(prefix="avfeat-storage-"))
    corpus = work / "corpus"
    if not corpus.is_dir():
        make_corpus(corpus, videos=args.videos, seconds=args.seconds, classes=args.classes, seed=0, size=112)
    caches, seconds_taken = {}, {}
    for name, flags in CONFIGS.items():
        out = work / name.replace(" + ", "-").replace(" ", "")
        started = time.perf_counter()
        if not (out / "cache.json").is_file():
            run_avfeat("extract", corpus, "--out", out, *TINY_MODELS, "--fps", args.fps, "--quiet", "--workers", 1,
                       "--shard-size", 1000, *flags, check=0, threads=1)
        seconds_taken[name] = time.perf_counter() - started
        caches[name] = out

    reference = Cache(caches["float16"])
    hours = sum(r.duration for r in reference.records(status="ok")) / 3600
    tiny = reference.config
    print(f"corpus: {args.videos} synthetic videos x {args.seconds:g} s ({hours * 3600:.0f} media-s), tiny random models "
          f"({tiny['audio_dim']}-d audio at {tiny['audio_token_rate']:g} Hz, {tiny['visual_tokens']} x {tiny['visual_dim']} visual at {args.fps:g} fps), one shard each")
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}; reads: 1.5 s windows, batches of 32, warm page cache\n")
    header = (f"{'storage':<14} {'files MB/h':>10} {'payload MB/h':>12} {'defaults MB/h':>13} {'x smaller':>9} "
              f"{'cos audio mean/min':>19} {'cos visual mean/min':>19} {'windows/s':>9} {'MB/s':>5}")
    print(header + ("   R@1 a2v / v2a" if args.recall else ""))
    print("-" * len(header) + ("-" * 17 if args.recall else ""))
    base = bytes_per_hour(**DEFAULT_GEOMETRY)
    for name, out in caches.items():
        cache = Cache(out)
        storage, pool = cache.config.get("storage", "float16"), int(cache.config.get("pool_patches", 1))
        files = sum(p.stat().st_size for p in (out / "shards").glob("*.h5"))
        defaults = bytes_per_hour(**DEFAULT_GEOMETRY, storage=storage, pool=pool)
        a_mean, a_min, v_mean, v_min = cosines(cache, reference, pool)
        windows_s, mb_s = read_speed(out)
        line = (f"{name:<14} {files / hours / 1e6:>10.1f} {payload(out) / hours / 1e6:>12.1f} {defaults / 1e6:>13.0f} {base / defaults:>9.2f} "
                f"{a_mean:>11.6f}/{a_min:.5f} {v_mean:>11.6f}/{v_min:.5f} {windows_s:>9.0f} {mb_s:>5.1f}")
        if args.recall:
            from avfeat.testing import align_class_recall, train_align_heads

            heads = train_align_heads(out, work / f"heads-{out.name}")
            a2v, v2a, count = align_class_recall(corpus, out, heads)
            line += f"   {a2v:.3f} / {v2a:.3f} ({count} windows)"
        print(line, flush=True)
    print("\nMB = 10^6 bytes. files: the shard files (HDF5 chunk padding included); payload: the token, scale and time arrays alone;")
    print(f"defaults: computed for 768-d audio at 50 Hz + 257 x 384 visual at 1 fps (float16: {base / 1e9:.3f} GB per media-hour); x smaller: against that float16")
    print("cos: per-token cosine with the float16 cache's tokens (pooled alike); MB/s: float tokens delivered by Cache.read_windows")
    if args.recall:
        print("R@1: class recall of held-out windows, max-mean heads, align acceptance recipe, seed 0 only")


if __name__ == "__main__":
    main()
