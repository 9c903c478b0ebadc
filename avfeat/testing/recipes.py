"""The acceptance recipes shared by the acceptance tests and ``benchmarks/acceptance.py``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from avfeat.testing.runner import TINY_MODELS, run_avfeat, torch_threads

# The recipes of the acceptance tests (tests/align/test_acceptance.py, tests/index/
# test_acceptance.py), kept here so that benchmarks/acceptance.py runs exactly what the tests
# run, over several seeds, and shows how far above its level each figure sits. Seed 0 is the
# tests' seed. A seed moves both the synthetic corpora and the training.


def build_cache(folder, videos: int, seconds: float, classes: int, fps: float, size: int = 64, seed: int = 0, threads: int | None = None):
    """Synthetic videos + `avfeat extract` with the tiny random backbones → (corpus, cache)."""
    from avfeat.data.synth import make_corpus

    folder = Path(folder)
    corpus, cache = folder / "corpus", folder / "cache"
    make_corpus(corpus, videos=videos, seconds=seconds, classes=classes, seed=seed, size=size)
    run_avfeat("extract", corpus, "--out", cache, *TINY_MODELS, "--fps", fps, "--quiet", "--workers", 1, check=0, threads=threads)
    return corpus, cache


# Align: max-mean heads find the right class among held-out windows (10 classes, chance 0.1)
# and beat mean-pool. 200 three-second videos at 2 fps, 1.5 s windows (3 frames, 75 audio
# tokens), 20% held out (40 videos, 160 windows); 500 steps of B = 32. Over 5 seeds, max-mean
# R@1 spans 0.89-1.00 with 300 steps (6 epochs) as with 500, but with 300 mean-pool came within
# 0.05 of max-mean (a2v) on one seed; with 500 the smallest lead is 0.13.
ALIGN_CORPUS = dict(videos=200, seconds=3.0, classes=10, fps=2, size=112)
ALIGN_RECIPE = dict(window=1.5, dim=64, head="mlp", batch_size=32, passes_per_epoch=10, epochs=10, lr=1e-2, val_fraction=0.2, val_windows=4,
                    temporal_negatives=False)  # measured without them (the default turns them on for 3 s videos)

# Index: heads from `avfeat train-head` (the align recipe with temporal negatives a frame pair
# apart, 6 epochs) on 96 training videos of 4 s at 5 fps, 6 classes (120 steps of B = 32), then
# `avfeat index`. Checked on corpora never trained on: 30 held-out videos of the training
# classes (class R@1 both ways, plain and reranked), 20 videos of 10 s with offsets in
# [-1, 1] s (sync within one frame interval, 0.2 s) and 20 clips of 2 s cut from indexed
# videos (locate: right video, start within 0.2 s).
# More steps do not help here: at 300 steps plain audio → visual fell to 0.47-0.50 on two seeds
# (the pooled vectors of the first stage are not what max-mean trains; see the levels below).
INDEX_CLASSES = 6
INDEX_RECIPE = ["--window", 1.5, "--head", "mlp", "--dim", 64, "--batch-size", 32, "--passes-per-epoch", 10, "--epochs", 6,
                "--lr", 1e-2, "--temporal-negatives", "--min-shift", 0.4]
INDEX_RERANK = 20
# The offset videos last 10 s: in 6 s files, 5 events of 0.4-1.5 s with gaps of at least 0.3 s
# fill the file and come out almost evenly spaced, so a lag one event period (about 1.1 s) off
# the truth scores nearly as well, and sync missed 5 of 20 such videos on one seed in 5.
SYNC_SECONDS = 10
SYNC_TOLERANCE = 0.2  # seconds: one frame interval at 5 fps
LOCATE_TOLERANCE = 0.2

# The level each acceptance figure must reach. benchmarks/acceptance.py runs both recipes over
# 5 seeds (corpora and training) and prints each figure's minimum beside its level; every level
# sits below that minimum with room (two queries or more), because a change of float rounding
# moves a figure as much as another seed does: the same align corpus extracted before and after
# a refactor, 3 of 200 videos' tokens differing in the last float16 bit, gave v2a 0.931 and
# 0.894; issue 10's CI measured plain audio → visual 0.867 at seed 0 (0.967 here). The README
# has the figures.
ACCEPTANCE_LEVELS: dict[str, float] = {
    # Class R@1 over 160 held-out windows of only 40 videos: a seed, or another code path's
    # rounding, moves it by a few videos.
    "align max-mean a2v": 0.85,  # 5-seed minimum 0.938 (median 0.981)
    "align max-mean v2a": 0.85,  # 0.894 (median 0.969)
    "align a2v max-mean minus mean-pool": 0.05,  # 0.131: max-mean beats the CLIP-style mean-pool
    "align v2a max-mean minus mean-pool": 0.05,  # 0.175
    # Plain audio → visual compares a mean-pooled sound with mean-pooled pictures, mostly
    # background, which max-mean heads are not trained to match (the README says to use
    # --rerank for audio queries): 0.70-1.00 over 5 seeds. Its level guards the first stage
    # that --rerank reorders; the reranked figure holds the audio path to 0.85.
    "index a2v plain": 0.6,  # 0.700 (30 queries)
    "index a2v rerank": 0.85,  # 0.933
    "index v2a plain": 0.9,  # 0.967
    "index v2a rerank": 0.9,  # 1.000
    "index sync": 0.8,  # 0.900 (20 videos)
    "index locate": 0.8,  # 0.900 (20 clips)
    # No options anywhere (build_defaults_acceptance: 2 fps, the derived schedule, rerank 50),
    # 4 seeds (docs/benchmarks.md, "What no options give"); the goal is 0.9 for each.
    "defaults a2v": 0.85,  # 4-seed minimum 0.933 (median 1.000)
    "defaults v2a": 0.9,  # 0.967 (1.000)
    # Sync misses most where a lag one event period off the truth scores as well: 2 of 20 videos
    # on seed 2 (errors of 1.5 and 2.3 s), 1 on seed 1; at 1 fps the figure was 0.40 and 0.60.
    "defaults sync": 0.7,  # 0.800 (median 0.925)
}


def align_acceptance_cache(folder, seed: int = 0):
    """The align acceptance corpus (synth seed ``seed``) and its cache → (corpus, cache)."""
    return build_cache(folder, **ALIGN_CORPUS, seed=seed, threads=1)


def train_align_heads(cache, out, aggregation: str = "max-mean", seed: int = 0):
    """Train heads with the align acceptance recipe, in this process, on the CPU."""
    from avfeat.align.config import RunOptions, TrainConfig
    from avfeat.align.train import train

    with torch_threads(1):
        train(cache, out, TrainConfig(**ALIGN_RECIPE, aggregation=aggregation, seed=seed), RunOptions(quiet=True, device="cpu"), log=lambda _: None)
    return out


def align_class_recall(corpus, cache_path, heads) -> tuple[float, float, int]:
    """Class-level R@1 of the heads' held-out windows: (audio → visual, visual → audio, windows).

    A hit is the top-1 window among all held-out windows belonging to a video of the query's class.
    """
    import pyarrow.parquet as pq

    from avfeat.align.checkpoint import load_checkpoint
    from avfeat.align.evaluate import held_out_scores
    from avfeat.align.metrics import both_directions
    from avfeat.data.cache import Cache

    with torch_threads(1):
        scores, video_ids, _ = held_out_scores(load_checkpoint(heads), cache_path)
    truth = {row["path"]: row["class"] for row in pq.read_table(Path(corpus) / "ground_truth.parquet").to_pylist()}
    cache = Cache(cache_path)
    labels = [truth[os.path.basename(cache.record(v).path)] for v in video_ids]
    metrics = both_directions(scores, labels, labels)
    return metrics["a2v"]["R@1"], metrics["v2a"]["R@1"], len(video_ids)


def build_index_acceptance(root, seed: int = 0):
    """Corpora, cache, heads and index of the index acceptance run under ``root`` → Searcher.

    ``root/train`` (96 videos), ``root/held`` (30) and ``root/offsets`` (20 of 10 s, offsets in
    [-1, 1] s) use synth seeds ``3 * seed``, ``+ 1``, ``+ 2``; train-head uses ``--seed seed``.
    """
    from avfeat.index import Searcher

    root = Path(root)
    common = ["--classes", INDEX_CLASSES, "--size", 96, "--quiet"]
    run_avfeat("synth", root / "train", "--videos", 96, "--seconds", 4, "--seed", 3 * seed, *common, check=0)
    run_avfeat("synth", root / "held", "--videos", 30, "--seconds", 4, "--seed", 3 * seed + 1, *common, check=0)
    run_avfeat("synth", root / "offsets", "--videos", 20, "--seconds", SYNC_SECONDS, "--seed", 3 * seed + 2, "--offset", 1.0, *common, check=0)
    run_avfeat("extract", root / "train", "--out", root / "cache", *TINY_MODELS, "--fps", 5, "--workers", 1, "--quiet", check=0, threads=1)
    run_avfeat("train-head", root / "cache", "--out", root / "heads", *INDEX_RECIPE, "--seed", seed, "--workers", 0, "--quiet", check=0, threads=1)
    run_avfeat("index", root / "cache", "--heads", root / "heads", "--out", root / "index", "--quiet", check=0, threads=1)
    return Searcher(root / "index")


def corpus_classes(folder) -> dict[str, int]:
    """{file name: class} of a synthetic corpus."""
    import pyarrow.parquet as pq

    return {row["path"]: row["class"] for row in pq.read_table(Path(folder) / "ground_truth.parquet").to_pylist()}


def held_out_tokens(root, searcher) -> dict[str, Any]:
    """{file name: query tokens} of the held-out corpus, embedded once with the index's backbones."""
    root = Path(root)
    with torch_threads(1):
        return {name: searcher.tokens(root / "held" / name) for name in corpus_classes(root / "held")}


def held_out_class_r1(root, searcher, tokens: dict[str, Any], side: str, rerank: int) -> tuple[float, int]:
    """Share of held-out queries from ``side`` whose top hit in the other modality's index is a
    video of their class → (share, queries)."""
    root = Path(root)
    indexed, held = corpus_classes(root / "train"), corpus_classes(root / "held")
    with torch_threads(1):
        hits = [searcher.search(tokens[name], side=side, k=1, rerank=rerank)[0] for name in held]
    right = [indexed[os.path.basename(hit.path)] == held[name] for hit, name in zip(hits, held)]
    return float(np.mean(right)), len(right)


def sync_accuracy(root, searcher) -> tuple[float, list[float]]:
    """Share of the offset corpus whose offset `avfeat sync` recovers within SYNC_TOLERANCE →
    (share, errors in seconds)."""
    import pyarrow.parquet as pq

    from avfeat.index.sync import sync_file

    root = Path(root)
    truth = pq.read_table(root / "offsets" / "ground_truth.parquet").to_pylist()
    with torch_threads(1):
        errors = [sync_file(root / "offsets" / row["path"], searcher.checkpoint, backbones=searcher.backbones).offset - row["offset"] for row in truth]
    return float(np.mean(np.abs(errors) <= SYNC_TOLERANCE)), [float(e) for e in errors]


def locate_accuracy(searcher, work, clips: int = 20, seed: int = 0) -> tuple[float, int]:
    """Cut 2 s clips (decoded and re-encoded) at random times from the first ``clips`` indexed
    videos; share that ``locate`` puts in the right video within LOCATE_TOLERANCE → (share, clips)."""
    import av

    from avfeat.data.synth_media import write_media

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    found = []
    for i, row in enumerate(searcher.cache.records(status="ok")[:clips]):
        start = round(float(rng.uniform(0.2, 1.8)), 2)
        with av.open(row.path) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0) if start - 1e-6 <= f.time < start + 2.0 - 1e-6])
        with av.open(row.path) as container:
            audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
        clip = work / f"clip{i}.mp4"
        write_media(clip, frames, 25, audio[int(start * 16000) : int((start + 2.0) * 16000)].astype(np.float32), 16000)
        with torch_threads(1):
            candidates = searcher.locate(clip, k=1)  # empty when the clip scores below "not found"
        found.append(bool(candidates) and candidates[0].video_id == row.video_id and abs(candidates[0].time - start) <= LOCATE_TOLERANCE)
    return float(np.mean(found)), len(found)


# Defaults: the 80-video synthetic corpus (80 videos of 4 s, 8 classes) through `avfeat extract`,
# `train-head` and `index` with no options but the tiny offline models; search (the default
# rerank) and `sync` (its defaults) are checked on held-out corpora as in the index recipe
# (tests/index/test_defaults_acceptance.py).
DEFAULTS_CORPUS = dict(videos=80, seconds=4.0, classes=8)


def build_defaults_acceptance(root, seed: int = 0, train_options: tuple = (), extract_options: tuple = ()):
    """``root/train`` (the 80-video corpus), ``root/held`` (30 videos of its classes) and
    ``root/offsets`` (20 of ``SYNC_SECONDS`` s, offsets in [-1, 1] s), then cache, heads and index
    with default options → Searcher. ``train_options``, ``extract_options``: extra flags (experiments only)."""
    from avfeat.index import Searcher

    root = Path(root)
    common = ["--classes", DEFAULTS_CORPUS["classes"], "--size", 112, "--quiet"]
    run_avfeat("synth", root / "train", "--videos", DEFAULTS_CORPUS["videos"], "--seconds", DEFAULTS_CORPUS["seconds"], "--seed", 3 * seed, *common, check=0)
    run_avfeat("synth", root / "held", "--videos", 30, "--seconds", DEFAULTS_CORPUS["seconds"], "--seed", 3 * seed + 1, *common, check=0)
    run_avfeat("synth", root / "offsets", "--videos", 20, "--seconds", SYNC_SECONDS, "--seed", 3 * seed + 2, "--offset", 1.0, *common, check=0)
    run_avfeat("extract", root / "train", "--out", root / "cache", *TINY_MODELS, *extract_options, "--quiet", check=0, threads=1)
    run_avfeat("train-head", root / "cache", "--out", root / "heads", *train_options, "--quiet", check=0, threads=1)
    run_avfeat("index", root / "cache", "--heads", root / "heads", "--out", root / "index", "--quiet", check=0, threads=1)
    return Searcher(root / "index")
