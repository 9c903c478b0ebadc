"""Reusable test dummies shipped with the package.

Small media files made on the fly (one of each kind of bad input, small valid clips), the
location of the real test clips, module-level functions the worker-pool tests run in
child processes (they must be importable by name there, so they live here, not in a test), and
the acceptance recipes shared by the acceptance tests and ``benchmarks/acceptance.py``.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

# Environment variable naming the folder of real test clips (see ``test_media_dir``).
TEST_MEDIA_ENV = "AVFEAT_TEST_MEDIA"
MEDIA_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".m4v", ".avi")

# Each case ``make_bad_input_cases`` writes, and the status ``avfeat.extract.media.decode``
# gives it (with the default DecodeSpec or any fps >= 1). Two cases share ``unreadable``, so
# cases are keyed by name; a case named after a status is the only case for that status.
BAD_INPUT_STATUS: dict[str, str] = {
    "empty_file": "empty_file",  # zero bytes
    "unreadable_truncated": "unreadable",  # the first 30% of a valid MP4: no moov atom
    "unreadable_text": "unreadable",  # a text file named .mp4
    "no_audio": "no_audio",  # H.264 video, no audio stream
    "no_video": "no_video",  # AAC audio only (an .mp4 without a video stream)
    "too_short": "too_short",  # 0.3 s: shorter than one frame interval at 1 fps
    # Garbage over 10% of the file's middle (inside mdat): FFmpeg's H.264 and AAC decoders
    # raise "Invalid data found" on the damaged packets, so the rule in ``decode`` fails it.
    "corrupt_middle": "decode_error",
}


def test_media_dir() -> Path | None:
    """The folder of real test clips, or None when it is absent.

    ``$AVFEAT_TEST_MEDIA`` when set, else ``<repository root>/../shared/media``.
    """
    raw = os.environ.get(TEST_MEDIA_ENV)
    folder = Path(raw) if raw else Path(__file__).resolve().parents[1].parent / "shared" / "media"
    if folder.is_dir() and any(p.suffix.lower() in MEDIA_SUFFIXES for p in folder.iterdir()):
        return folder
    return None


test_media_dir.__test__ = False  # not a pytest test despite the name


def clip_frames(seconds: float, size: tuple[int, int] = (64, 64), fps: float = 25) -> np.ndarray:
    """(F, H, W, 3) uint8 frames whose content changes every frame.

    Frame ``i`` has mean grey level ``frame_level(i)`` everywhere except a white square that
    moves one step per frame, so a decoded frame can be matched to its index.
    """
    h, w = size
    n = max(1, int(round(seconds * fps)))
    frames = np.empty((n, h, w, 3), dtype=np.uint8)
    side = max(2, min(h, w) // 6)
    for i in range(n):
        frames[i] = frame_level(i)
        x = (3 * i) % max(1, w - side)
        frames[i, h // 4 : h // 4 + side, x : x + side] = 255
    return frames


def frame_level(index: int) -> int:
    """Background grey level of synthetic frame ``index`` (see ``clip_frames``)."""
    return 16 + (index * 9) % 200


def clip_audio(seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """A mono chirp (300 Hz rising) with a slow amplitude wobble, float32 in [-0.5, 0.5]."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    phase = 2 * np.pi * (300 * t + 100 * t**2)
    return (0.4 * np.sin(phase) * (0.8 + 0.2 * np.sin(2 * np.pi * 1.5 * t))).astype(np.float32)


def make_clip(
    path: str | os.PathLike,
    seconds: float = 2.0,
    size: tuple[int, int] = (64, 64),
    fps: float = 25,
    sample_rate: int = 16000,
    audio_start: float = 0.0,
) -> str:
    """Write a small valid H.264/AAC clip with changing content; returns its path.

    Args:
        path: output file (container from the extension).
        seconds: length of both the video and the audio.
        size: (height, width), even numbers.
        fps: video frame rate.
        sample_rate: audio rate.
        audio_start: seconds by which the audio starts after the video.
    """
    from avfeat.data.synth import write_media

    write_media(
        path,
        clip_frames(seconds, size, fps),
        fps,
        clip_audio(seconds, sample_rate),
        sample_rate,
        audio_start=audio_start,
    )
    return os.fspath(path)


def make_bad_inputs(folder: str | os.PathLike) -> dict[str, str]:
    """Write every bad input into ``folder``; returns {expected status: path}.

    All cases of ``make_bad_input_cases`` are written; where two share a status
    (``unreadable``: truncated MP4 and text file) the map names the first (the truncated MP4).
    Use ``make_bad_input_cases`` to get every file.
    """
    paths: dict[str, str] = {}
    for case, path in make_bad_input_cases(folder).items():
        paths.setdefault(BAD_INPUT_STATUS[case], path)
    return paths


def make_bad_input_cases(folder: str | os.PathLike) -> dict[str, str]:
    """Write one file per bad-input case into ``folder``; returns {case: path}.

    The expected decode status of each case is ``BAD_INPUT_STATUS[case]``.
    """
    from avfeat.data.synth import write_media

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}

    empty = folder / "empty.mp4"
    empty.write_bytes(b"")
    paths["empty_file"] = str(empty)

    valid = folder / "valid.mp4"
    make_clip(valid, seconds=2.0)
    data = valid.read_bytes()

    truncated = folder / "truncated.mp4"
    truncated.write_bytes(data[: int(len(data) * 0.3)])
    paths["unreadable_truncated"] = str(truncated)

    text = folder / "notes.mp4"
    text.write_text("This is a text file, not a video.\n" * 20)
    paths["unreadable_text"] = str(text)

    video_only = folder / "video_only.mp4"
    write_media(video_only, clip_frames(1.5), 25, None, 16000)
    paths["no_audio"] = str(video_only)

    audio_only = folder / "audio_only.mp4"
    write_media(audio_only, None, 25, clip_audio(1.5), 16000)
    paths["no_video"] = str(audio_only)

    short = folder / "short.mp4"
    make_clip(short, seconds=0.3)
    paths["too_short"] = str(short)

    corrupt = bytearray(data)
    begin, length = int(len(corrupt) * 0.4), int(len(corrupt) * 0.1)
    corrupt[begin : begin + length] = np.random.default_rng(0).integers(0, 256, length, dtype=np.uint8).tobytes()
    corrupt_path = folder / "corrupt_middle.mp4"
    corrupt_path.write_bytes(bytes(corrupt))
    paths["corrupt_middle"] = str(corrupt_path)

    valid.unlink()
    return paths


# ---- worker dummies: module-level so worker processes can import them by name ----


def echo(x):
    """Return the argument unchanged."""
    return x


def sleepy(seconds: float) -> float:
    """Sleep, then return the argument."""
    time.sleep(seconds)
    return seconds


def crash(code: int = 3):
    """End the calling process at once, like a codec segfault.

    ``code >= 0`` exits with that code (``os._exit``); ``code < 0`` kills the process with
    signal ``-code`` (``-9``: SIGKILL; prefer it to SIGSEGV, which may write a core file).
    """
    if code < 0:
        os.kill(os.getpid(), -code)
        time.sleep(10)  # the signal arrives asynchronously
    os._exit(code)


def fail(message: str = "boom"):
    """Raise ValueError(message)."""
    raise ValueError(message)


def big_array(nbytes: int) -> np.ndarray:
    """A uint8 array of ``nbytes`` with a checkable pattern (``arange % 251``)."""
    return np.tile(np.arange(251, dtype=np.uint8), nbytes // 251 + 1)[:nbytes]


def dispatch(task: tuple):
    """Run the dummy named by ``task[0]`` with the remaining items as arguments.

    Lets one pool mix behaviours, e.g. ``("sleepy", 0.1)``, ``("crash", 7)``,
    ``("fail", "bad")``, ``("echo", 5)``, ``("big_array", 50_000_000)``.
    """
    name, *args = task
    functions = {"echo": echo, "sleepy": sleepy, "crash": crash, "fail": fail, "big_array": big_array}
    return functions[name](*args)


class SlowStart:
    """``dispatch`` behind a slow start: unpickling it in a worker process sleeps ``delay`` s.

    A worker unpickles its function while it starts, so this stands in for a task module whose
    imports are slow (a cold worker importing PyAV and torch on a loaded machine).
    """

    def __init__(self, delay: float):
        self.delay = delay

    def __getstate__(self):
        return {"delay": self.delay}

    def __setstate__(self, state):
        self.delay = state["delay"]
        time.sleep(self.delay)

    def __call__(self, task: tuple):
        return dispatch(task)


# The tiny random backbones every end-to-end test extracts with, computed in float32: `--dtype
# auto` picks bfloat16, int8 or float32 from the CPU it finds, and tests must give the same
# tokens (and so the same quality levels) on every CPU. A test of the other paths names its
# --dtype after these (the last value wins).
TINY_MODELS = ["--audio-model", "random:hubert-tiny", "--visual-model", "random:dinov2-tiny", "--dtype", "float32"]


def assert_same_cache(path, expected_path, ignore: tuple[str, ...] = ()) -> None:
    """Two caches hold the same videos, manifest records (but the fields in ``ignore``) and
    tensors (bit for bit)."""
    from avfeat.data.cache import Cache, read_manifest

    def snapshot(root):
        cache = Cache(root)
        manifest = read_manifest(root).sort_by("video_id").to_pylist()
        ok = [row["video_id"] for row in manifest if row["status"] == "ok"]
        return manifest, {vid: (cache.audio_tokens(vid), cache.visual_tokens(vid), cache.frame_times(vid)) for vid in ok}

    manifest, tensors = snapshot(path)
    expected_manifest, expected_tensors = snapshot(expected_path)
    differences = [
        (row["video_id"], {key: (row[key], want[key]) for key in row if row[key] != want[key] and key not in ignore})
        for row, want in zip(manifest, expected_manifest)
    ]
    differences = [(vid, fields) for vid, fields in differences if fields]
    assert len(manifest) == len(expected_manifest) and not differences, differences
    assert tensors.keys() == expected_tensors.keys()
    for vid, arrays in tensors.items():
        for got, want in zip(arrays, expected_tensors[vid]):
            np.testing.assert_array_equal(got, want)


def run_avfeat(*args, check: int | None = None, timeout: float = 1200, threads: int | None = None):
    """Run ``avfeat ARGS`` in this process, as a user would from a shell: captured stdout and
    stderr, the exit status (1 with the traceback on stderr for an uncaught exception, as Python
    would give); with ``check``, assert the exit status (showing stderr on failure).

    In-process runs skip the 3-5 s of importing torch, transformers and FAISS again per command;
    where the process itself is the subject (signals, kill -9, locks between processes), use
    ``run_avfeat_process``. ``threads`` caps torch's intra-op threads for the command: small
    kernels run faster and far more steadily so on a shared few-core machine. ``timeout`` is
    honoured by ``run_avfeat_process`` only.
    """
    import io
    import subprocess
    import sys
    import traceback

    from avfeat.cli import main

    argv = [str(arg) for arg in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    saved_argv, sys.argv = sys.argv, ["avfeat", *argv]  # what the command line would hold (--nproc relaunches it)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), torch_threads(threads):
            try:
                main(argv)
            except SystemExit as exit_:
                code = exit_.code
            except Exception:  # what the interpreter does with an uncaught exception
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
    if isinstance(code, str):  # sys.exit("message"): printed, status 1
        stderr.write(code + "\n")
        code = 1
    result = subprocess.CompletedProcess(["avfeat", *argv], code or 0, stdout.getvalue(), stderr.getvalue())
    if check is not None:
        assert result.returncode == check, result.stderr[-3000:]
    return result


def run_avfeat_process(*args, check: int | None = None, timeout: float = 1200, threads: int | None = None):
    """Run ``python -m avfeat ARGS`` in a child process; as ``run_avfeat`` otherwise.

    For tests whose subject is the process: its exit on a signal, a lock held between
    processes, a kill, the interpreter's own output. ``threads`` sets OMP_NUM_THREADS there.
    """
    import subprocess
    import sys

    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    result = subprocess.run([sys.executable, "-m", "avfeat", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    if check is not None:
        assert result.returncode == check, result.stderr[-3000:]
    return result


# ---- acceptance recipes ----
# The recipes of the acceptance tests (tests/align/test_acceptance.py, tests/index/
# test_acceptance.py), kept here so that benchmarks/acceptance.py runs exactly what the tests
# run, over several seeds, and shows how far above its level each figure sits. Seed 0 is the
# tests' seed. A seed moves both the synthetic corpora and the training.


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run the block with ``count`` torch intra-op threads (restored after; None: unchanged).

    The acceptance runs use one: their small kernels run faster so, far more steadily when other
    jobs share a 2-core machine, and the float sums keep one order on every machine.
    """
    if count is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
ALIGN_RECIPE = dict(window=1.5, dim=64, head="mlp", batch_size=32, passes_per_epoch=10, epochs=10, lr=1e-2, val_fraction=0.2, val_windows=4)

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
}


def align_acceptance_cache(folder, seed: int = 0):
    """The align acceptance corpus (synth seed ``seed``) and its cache → (corpus, cache)."""
    return build_cache(folder, **ALIGN_CORPUS, seed=seed, threads=1)


def train_align_heads(cache, out, aggregation: str = "max-mean", seed: int = 0):
    """Train heads with the align acceptance recipe, in this process, on the CPU."""
    from avfeat.align.train import RunOptions, TrainConfig, train

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

    from avfeat.data.synth import write_media

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


# ---- remote inputs: a local HTTP server with Range requests, a local S3, WebDataset shards ----
# (tests/extract/test_remote.py and benchmarks/remote.py; everything binds to 127.0.0.1 only)


class LocalHTTP:
    """A running ``serve_http``: its base URL (no trailing slash) and every request it got, as
    ``(method, path, Range header or None)``."""

    def __init__(self, url: str = ""):
        self.url = url
        self.requests: list[tuple[str, str, str | None]] = []


@contextlib.contextmanager
def serve_http(root, forbidden=(), stalled=(), stall: float = 60.0):
    """Serve the files under ``root`` on 127.0.0.1 over HTTP/1.1 with Range requests (206 and
    Content-Range, as object stores and CDNs answer; Python's http.server has no Range).

    Paths (``/clips/a.mp4``) in ``forbidden`` answer 403; GETs of paths in ``stalled`` wait
    ``stall`` seconds before answering (HEAD answers at once), standing in for a server that
    stops sending. A folder answers an HTML page of links, as an index page does. Yields a
    :class:`LocalHTTP`; the server stops when the block ends.
    """
    import http.server
    import threading
    from email.utils import formatdate
    from urllib.parse import quote, unquote, urlsplit

    root = Path(root).resolve()
    stop = threading.Event()
    state = LocalHTTP("")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as clients expect of a file server

        def log_message(self, *args):  # quiet
            pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _empty(self, code: int, **headers) -> None:
            self.send_response(code)
            for key, value in {"Content-Length": "0", **headers}.items():
                self.send_header(key, value)
            self.end_headers()

        def _serve(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            state.requests.append((self.command, path, self.headers.get("Range")))
            try:
                if path in forbidden:
                    return self._empty(403)
                if body and path in stalled:
                    stop.wait(stall)
                local = (root / path.lstrip("/")).resolve()
                if local != root and root not in local.parents:
                    return self._empty(404)
                if local.is_dir():
                    return self._listing(local, path, body)
                if not local.is_file():
                    return self._empty(404)
                self._file(local, body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

        def _listing(self, folder: Path, path: str, body: bool) -> None:
            links = "".join(f'<a href="{quote(p.name)}{"/" if p.is_dir() else ""}">{p.name}</a>\n' for p in sorted(folder.iterdir()))
            data = f"<html><body>\n{links}</body></html>\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _file(self, local: Path, body: bool) -> None:
            size = local.stat().st_size
            start, end, code = 0, size - 1, 200
            ranged = self.headers.get("Range")
            if ranged:
                first, _, last = ranged.removeprefix("bytes=").partition("-")
                try:
                    if first:
                        start, end = int(first), min(size - 1, int(last)) if last else size - 1
                    else:  # bytes=-N: the last N bytes
                        start, end = max(0, size - int(last)), size - 1
                except ValueError:
                    return self._empty(400)
                if start >= size or start > end:
                    return self._empty(416, **{"Content-Range": f"bytes */{size}"})
                code = 206
            self.send_response(code)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Last-Modified", formatdate(local.stat().st_mtime, usegmt=True))
            if code == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if not body:
                return
            with open(local, "rb") as handle:
                handle.seek(start)
                left = end - start + 1
                while left > 0:
                    chunk = handle.read(min(left, 256 * 1024))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True  # a stalled answer never holds up the end of the test

        def handle_error(self, request, client_address):  # a client that hung up: not news
            pass

    server = Server(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="avfeat-test-http", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join()


# Credentials for the local S3 of ``serve_s3`` (moto accepts any).
S3_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def serve_s3():
    """A local S3-compatible server (moto's ThreadedMotoServer) on 127.0.0.1; yields its endpoint
    URL. Point boto3 and s3fs at it with ``AWS_ENDPOINT_URL`` and ``S3_TEST_ENV``."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def upload_s3(endpoint: str, bucket: str, files: dict) -> None:
    """Create ``bucket`` on the S3 at ``endpoint`` and put ``{key: local path}`` into it."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in S3_TEST_ENV.items() if k != "AWS_DEFAULT_REGION"},
                          region_name=S3_TEST_ENV["AWS_DEFAULT_REGION"])
    client.create_bucket(Bucket=bucket)
    for key, path in files.items():
        client.upload_file(str(path), bucket, key)


def make_shard(path, samples: dict) -> str:
    """Write a WebDataset shard as video2dataset does: per ``{key: (media file, metadata or
    None)}`` the members ``KEY.<media extension>`` and ``KEY.json``; returns its path."""
    import io
    import json
    import tarfile

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for key, (media, metadata) in samples.items():
            if metadata is not None:
                data = json.dumps(metadata).encode()
                info = tarfile.TarInfo(f"{key}.json")
                info.size, info.mtime = len(data), 1_700_000_000
                tar.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(f"{key}{Path(media).suffix}")
            info.size, info.mtime = os.path.getsize(media), 1_700_000_000  # fixed: the bytes do not depend on when
            with open(media, "rb") as handle:
                tar.addfile(info, handle)
    return os.fspath(path)
