"""Acceptance figures of retrieval, sync and locate on synthetic corpora, with heads from
`avfeat train-head`: part of the default run (about two minutes on a 2-core CPU, most of it
training; one corpus, cache, heads and index shared by the module).

Three held-out corpora from `avfeat synth`, none of them trained on:
- ``held``: 30 videos of the training classes; each one's audio must find a video of its
  class at rank 1 in the visual index in >= 0.9 of cases, and each one's pictures a video of
  its class in the audio index, both plain and with ``rerank``;
- ``offsets``: 20 videos with offsets drawn from [-1, 1] s (``--offset 1.0``); ``sync_file``
  (what `avfeat sync` runs, with its default --max-offset 2) must recover >= 0.9 of them within
  one frame interval (0.2 s at --fps 5);
- 20 clips of 2 s cut (decoded and re-encoded) from indexed videos at random times: ``locate``
  (what `avfeat search --locate` runs) must name the source video and start within 0.2 s for
  >= 0.9 of them.
"""

import os

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from avfeat.data.synth import write_media
from avfeat.index import Searcher
from avfeat.index.sync import sync_file
from avfeat.testing import TINY_MODELS as TINY
from avfeat.testing import run_avfeat as avfeat

LEVEL = 0.9
CLASSES = 6
# The heads: the align acceptance recipe (tests/align/test_acceptance.py) with temporal
# negatives a frame pair apart, on 96 training videos of 4 s at 5 fps (120 steps of B = 32).
RECIPE = ["--window", 1.5, "--head", "mlp", "--dim", 64, "--batch-size", 32, "--passes-per-epoch", 10, "--epochs", 6,
          "--lr", 1e-2, "--temporal-negatives", "--min-shift", 0.4, "--seed", 0]


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("acceptance")
    common = ["--classes", CLASSES, "--size", 96, "--quiet"]
    avfeat("synth", root / "train", "--videos", 96, "--seconds", 4, "--seed", 0, *common, check=0)
    avfeat("synth", root / "held", "--videos", 30, "--seconds", 4, "--seed", 1, *common, check=0)
    avfeat("synth", root / "offsets", "--videos", 20, "--seconds", 6, "--seed", 2, "--offset", 1.0, *common, check=0)
    avfeat("extract", root / "train", "--out", root / "cache", *TINY, "--fps", 5, "--workers", 1, "--quiet", check=0, threads=1)
    avfeat("train-head", root / "cache", "--out", root / "heads", *RECIPE, "--workers", 0, "--quiet", check=0, threads=1)
    avfeat("index", root / "cache", "--heads", root / "heads", "--out", root / "index", "--quiet", check=0, threads=1)
    return root, Searcher(root / "index")


def _classes(folder):
    return {row["path"]: row["class"] for row in pq.read_table(folder / "ground_truth.parquet").to_pylist()}


@pytest.fixture(scope="module")
def held_out(setup):
    """Each held-out file's tokens, embedded once with the index's backbones."""
    root, searcher = setup
    held = _classes(root / "held")
    return held, {name: searcher.tokens(root / "held" / name) for name in held}


@pytest.mark.parametrize("rerank", [0, 20])
@pytest.mark.parametrize("side", ["audio", "visual"])
def test_held_out_queries_find_their_class(setup, held_out, side, rerank):
    root, searcher = setup
    indexed = _classes(root / "train")
    held, tokens = held_out
    hits = [searcher.search(tokens[name], side=side, k=1, rerank=rerank)[0] for name in held]
    right = [indexed[os.path.basename(hit.path)] == held[name] for hit, name in zip(hits, held)]
    print(f"{side} → {'visual' if side == 'audio' else 'audio'}, rerank {rerank}: class R@1 {np.mean(right):.3f} over {len(right)} queries")
    assert len(right) == 30 and np.mean(right) >= LEVEL


def test_search_cli_with_rerank_finds_the_class(setup):
    root, _ = setup
    indexed, held = _classes(root / "train"), _classes(root / "held")
    import json

    name = sorted(held)[0]
    for side in ("audio", "visual"):
        hits = json.loads(avfeat("search", root / "index", root / "held" / name, "--from", side, "--rerank", 20, "-k", 1, "--json", check=0, threads=1).stdout)
        assert indexed[os.path.basename(hits[0]["path"])] == held[name]


def test_sync_recovers_injected_offsets(setup):
    root, searcher = setup
    truth = pq.read_table(root / "offsets" / "ground_truth.parquet").to_pylist()
    assert max(abs(row["offset"]) for row in truth) > 0.9  # the corpus spans the range
    errors = np.array([sync_file(root / "offsets" / row["path"], searcher.checkpoint, backbones=searcher.backbones).offset - row["offset"] for row in truth])
    within = np.mean(np.abs(errors) <= 0.2)
    print(f"sync within 0.2 s: {within:.3f} over {len(errors)} videos; errors {np.round(errors, 3).tolist()}")
    assert len(errors) == 20 and within >= LEVEL


def test_locate_finds_source_and_time(setup, tmp_path):
    _, searcher = setup
    rng = np.random.default_rng(0)
    found = []
    for i, row in enumerate(searcher.cache.records(status="ok")[:20]):
        start = round(float(rng.uniform(0.2, 1.8)), 2)
        with av.open(row.path) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0) if start - 1e-6 <= f.time < start + 2.0 - 1e-6])
        with av.open(row.path) as container:
            audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
        clip = tmp_path / f"clip{i}.mp4"
        write_media(clip, frames, 25, audio[int(start * 16000) : int((start + 2.0) * 16000)].astype(np.float32), 16000)
        best = searcher.locate(clip, k=1)[0]
        found.append(best.video_id == row.video_id and abs(best.time - start) <= 0.2)
    print(f"locate: {np.mean(found):.3f} over {len(found)} clips")
    assert len(found) == 20 and np.mean(found) >= LEVEL
