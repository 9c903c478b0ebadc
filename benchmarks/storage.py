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
- with ``--trade-off``: what heads trained on each storage are worth, on the demo's recipe
  (``avfeat.demo.DemoConfig``: 200 synthetic videos of 6 s, 8 classes, 5 fps, temporal negatives;
  the align acceptance corpus at 2 fps is too coarse to measure sync) per seed, where a seed
  moves the corpus and the training. Its visual backbone is ``random:dinov2-tiny-224`` by
  default: tiny widths on DINOv2-small's 16 x 16 patch grid, so pooling makes the defaults'
  8 x 8. Each storage's cache is extracted from the seed's corpus, heads are trained on it, and
  `avfeat eval` measures them on their held-out videos: class R@1 both ways, sync within one
  0.2 s step (21 shifts per video) and the pointing game. Printed per storage: the mean over
  seeds, each seed's value, and the mean difference from float16 in points with its spread
  over seeds.

    python benchmarks/storage.py
    python benchmarks/storage.py --trade-off --seeds 0 1 2 --jobs 2     # ~1 h on 2 cores
    python benchmarks/storage.py --trade-off --jobs 2 --visual-model random:dinov2-tiny   # the demo's 8x8 grid, ~15 min
    python benchmarks/storage.py --smoke                # both parts at toy sizes: does it run?
"""

from __future__ import annotations

import os
import platform
import random
from pathlib import Path

import numpy as np

from _bench import parse, parser, timed, work_folder

CONFIGS = {  # name: extract flags
    "float16": [],
    "int8": ["--storage", "int8"],
    "pool 2": ["--pool-patches", "2"],
    "int8 + pool 2": ["--storage", "int8", "--pool-patches", "2"],
}

def folder_name(config: str) -> str:
    """A storage's folder under --work: "int8 + pool 2" → "int8-pool2"."""
    return config.replace(" + ", "-").replace(" ", "")


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

    grid = reference.config.visual_grid
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

        def read_all() -> int:
            delivered = 0
            for _ in range(passes):
                for chunk in batches:
                    audio, visual = cache.read_windows(chunk, geometry)
                    delivered += audio.nbytes + visual.nbytes
            return delivered

        elapsed, delivered = timed(read_all)
    return passes * len(order) / elapsed, delivered / elapsed / 1e6


FIGURES = {  # column: (section of `avfeat eval`'s report, key)
    "R@1 a2v": ("class_a2v", "R@1"),
    "R@1 v2a": ("class_v2a", "R@1"),
    "sync ±1": ("sync", "acc_within_1"),
    "pointing": ("localization", "pointing_game"),
}


# --smoke --trade-off: the demo's recipe at toy sizes (10 videos, 2 held out; one pass an epoch).
SMOKE_RECIPE = dict(videos=10, seconds=4.0, classes=2, epochs=1, passes_per_epoch=1, batch_size=4)


def trade_off_job(work: Path, seed: int, name: str, recipe_changes: dict) -> dict[str, float]:
    """Extract the seed's corpus with one storage, train the demo's heads on it, evaluate them → figures."""
    from avfeat.align.config import RunOptions
    from avfeat.align.train import train
    from avfeat.demo import DemoConfig
    from avfeat.evaluation import evaluate
    from avfeat.testing.runner import run_avfeat, torch_threads

    recipe = DemoConfig(seed=seed, **recipe_changes)
    corpus, out, heads = work / "corpus", work / folder_name(name), work / f"heads-{folder_name(name)}"
    if not (out / "cache.json").is_file():
        run_avfeat("extract", corpus, "--out", out, "--audio-model", recipe.audio_model, "--visual-model", recipe.visual_model,
                   "--fps", recipe.fps, "--quiet", "--workers", 1, *CONFIGS[name], check=0, threads=1)
    with torch_threads(1):
        if not (heads / "heads.safetensors").is_file():
            train(out, heads, recipe.train_config(), RunOptions(quiet=True, device="cpu"), log=lambda _: None)
        report = evaluate(heads, out, corpus / "ground_truth.parquet")
    sections = {**report["retrieval"], "sync": report["sync"], "localization": report.get("localization", {})}
    return {column: float(sections[section][key]) for column, (section, key) in FIGURES.items()}


def print_trade_off(work: Path, seeds: list[int], jobs: int, recipe_changes: dict) -> None:
    """``recipe_changes``: DemoConfig fields that differ from the demo's (the visual backbone, --smoke's sizes)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from avfeat.data.synth import make_corpus
    from avfeat.demo import DemoConfig

    recipe = DemoConfig(**recipe_changes)
    for seed in seeds:
        if not (work / f"seed{seed}" / "corpus" / "ground_truth.parquet").is_file():
            make_corpus(work / f"seed{seed}" / "corpus", videos=recipe.videos, seconds=recipe.seconds, classes=recipe.classes, seed=seed)
    print(f"the demo's recipe per seed {seeds}: {recipe.videos} videos of {recipe.seconds:g} s, {recipe.classes} classes, "
          f"{recipe.audio_model} + {recipe.visual_model} at {recipe.fps:g} fps; heads: {recipe.head} {recipe.dim}-d, "
          f"{recipe.window:g} s windows, batch {recipe.batch_size}, {recipe.epochs} epochs of {recipe.passes_per_epoch} passes, "
          "temporal negatives; trained and evaluated on each storage")
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, {jobs} job(s) at once, one thread each\n", flush=True)

    def run_jobs() -> dict:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {(name, seed): pool.submit(trade_off_job, work / f"seed{seed}", seed, name, recipe_changes) for seed in seeds for name in CONFIGS}
            return {key: future.result() for key, future in futures.items()}

    seconds, figures = timed(run_jobs)
    header = f"{'storage':<14} " + " ".join(f"{column:>28}" for column in FIGURES)
    print(header)
    print("-" * len(header))
    for name in CONFIGS:
        cells = []
        for column in FIGURES:
            values = [figures[name, seed][column] for seed in seeds]
            cells.append(f"{np.mean(values):.3f} ({' '.join(f'{v:.3f}' for v in values)})")
        print(f"{name:<14} " + " ".join(f"{cell:>28}" for cell in cells))
    print("\ndifference from float16 in points (mean over seeds, min to max of the per-seed differences):")
    for name in list(CONFIGS)[1:]:
        cells = []
        for column in FIGURES:
            deltas = [100 * (figures[name, seed][column] - figures["float16", seed][column]) for seed in seeds]
            cells.append(f"{np.mean(deltas):+.1f} ({min(deltas):+.1f} to {max(deltas):+.1f})")
        print(f"{name:<14} " + " ".join(f"{cell:>28}" for cell in cells))
    print(f"\n{len(figures)} jobs in {seconds:.0f} s. R@1: class recall of the held-out windows ({recipe.val_fraction:.0%} of the videos);")
    print("sync ±1: `avfeat eval`'s estimate within one 0.2 s step of each of 21 shifts of every held-out video; pointing: its pointing game")


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--videos", type=int, default=40)
    options.add_argument("--seconds", type=float, default=4.0)
    options.add_argument("--classes", type=int, default=5)
    options.add_argument("--fps", type=float, default=2.0)
    options.add_argument("--trade-off", action="store_true", help="train and evaluate heads on each storage (the demo's recipe) instead")
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of --trade-off")
    options.add_argument("--visual-model", default="random:dinov2-tiny-224",
                         help="--trade-off's visual backbone [default: tiny widths on the defaults' 16x16 patch grid, which pooling halves]")
    options.add_argument("--jobs", type=int, default=1, help="--trade-off runs this many (seed, storage) jobs at once, one thread each")
    options.add_argument("--work", type=Path, default=None, help="folder to keep the corpus and caches in [default: a temp folder]")
    args = parse(options, smoke=dict(videos=2, seconds=2.0, classes=2, seeds=[0]))

    work = work_folder(args.work, "avfeat-storage-")
    recipe_changes = {"visual_model": args.visual_model, **(SMOKE_RECIPE if args.smoke else {})}
    if args.trade_off:
        print_trade_off(work, args.seeds, args.jobs, recipe_changes)
        return
    print_storage_table(work, args)
    if args.smoke:  # the trade-off too: both parts of the script run
        print()
        print_trade_off(work / "trade-off", args.seeds, args.jobs, recipe_changes)


def print_storage_table(work: Path, args) -> None:
    """Bytes, fidelity and read speed of each storage on one corpus (the script's default part)."""
    from avfeat.data.cache import Cache
    from avfeat.data.synth import make_corpus
    from avfeat.testing.runner import TINY_MODELS, run_avfeat

    corpus = work / "corpus"
    if not corpus.is_dir():
        make_corpus(corpus, videos=args.videos, seconds=args.seconds, classes=args.classes, seed=0, size=112)
    caches = {}
    for name, flags in CONFIGS.items():
        out = work / folder_name(name)
        if not (out / "cache.json").is_file():
            run_avfeat("extract", corpus, "--out", out, *TINY_MODELS, "--fps", args.fps, "--quiet", "--workers", 1,
                       "--shard-size", 1000, *flags, check=0, threads=1)
        caches[name] = out

    reference = Cache(caches["float16"])
    hours = sum(r.duration for r in reference.records(status="ok")) / 3600
    tiny = reference.config
    print(f"corpus: {args.videos} synthetic videos x {args.seconds:g} s ({hours * 3600:.0f} media-s), tiny random models "
          f"({tiny.audio_dim}-d audio at {tiny.audio_token_rate:g} Hz, {tiny.visual_tokens} x {tiny.visual_dim} visual at {args.fps:g} fps), one shard each")
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}; reads: 1.5 s windows, batches of 32, warm page cache\n")
    header = (f"{'storage':<14} {'files MB/h':>10} {'payload MB/h':>12} {'defaults MB/h':>13} {'x smaller':>9} "
              f"{'cos audio mean/min':>19} {'cos visual mean/min':>19} {'windows/s':>9} {'MB/s':>5}")
    print(header)
    print("-" * len(header))
    base = bytes_per_hour(**DEFAULT_GEOMETRY)
    for name, out in caches.items():
        cache = Cache(out)
        storage, pool = cache.config.storage, cache.config.pool_patches
        files = sum(p.stat().st_size for p in (out / "shards").glob("*.h5"))
        defaults = bytes_per_hour(**DEFAULT_GEOMETRY, storage=storage, pool=pool)
        a_mean, a_min, v_mean, v_min = cosines(cache, reference, pool)
        windows_s, mb_s = read_speed(out)
        line = (f"{name:<14} {files / hours / 1e6:>10.1f} {payload(out) / hours / 1e6:>12.1f} {defaults / 1e6:>13.0f} {base / defaults:>9.2f} "
                f"{a_mean:>11.6f}/{a_min:.5f} {v_mean:>11.6f}/{v_min:.5f} {windows_s:>9.0f} {mb_s:>5.1f}")
        print(line, flush=True)
    print("\nMB = 10^6 bytes. files: the shard files (HDF5 chunk padding included); payload: the token, scale and time arrays alone;")
    print(f"defaults: computed for 768-d audio at 50 Hz + 257 x 384 visual at 1 fps (float16: {base / 1e9:.3f} GB per media-hour); x smaller: against that float16")
    print("cos: per-token cosine with the float16 cache's tokens (pooled alike); MB/s: float tokens delivered by Cache.read_windows")


if __name__ == "__main__":
    main()
