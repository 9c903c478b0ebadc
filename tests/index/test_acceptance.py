"""Acceptance figures of retrieval, sync and locate on synthetic corpora, with heads from
`avfeat train-head`. Minutes of CPU, so opt-in: ``AVFEAT_ACCEPTANCE=1 pytest tests/index/test_acceptance.py``.

- held-out audio queries find a video of their class at rank 1 in >= 0.9 of cases, and so do
  held-out visual queries the other way;
- `sync` recovers offsets in [-1, 1] s within one frame interval (0.2 s at 5 fps) for >= 0.9;
- `--locate` finds the source video and time (within 0.2 s) of >= 0.9 of clips cut from it.
"""

import os

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from avfeat.data.synth import write_media
from avfeat.index import Searcher
from avfeat.index.sync import sync_file
from tests.index.helpers import TINY, avfeat

pytestmark = pytest.mark.skipif(os.environ.get("AVFEAT_ACCEPTANCE") != "1", reason="set AVFEAT_ACCEPTANCE=1 (takes minutes)")
STEPS = int(os.environ.get("AVFEAT_ACCEPTANCE_STEPS", "600"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("acceptance")
    avfeat("synth", root / "train", "--videos", 48, "--seconds", 4, "--classes", 6, "--size", 96, "--seed", 0, "--quiet", check=0)
    avfeat("synth", root / "held", "--videos", 24, "--seconds", 4, "--classes", 6, "--size", 96, "--seed", 1, "--quiet", check=0)
    avfeat("synth", root / "offsets", "--videos", 20, "--seconds", 6, "--classes", 6, "--size", 96, "--seed", 2, "--offset", 1.0, "--quiet", check=0)
    avfeat("extract", root / "train", "--out", root / "cache", *TINY, "--fps", 5, "--quiet", check=0)
    avfeat(
        "train-head", root / "cache", "--out", root / "heads", "--window", 1.0, "--hop", 0.2, "--dim", 64, "--steps", STEPS,
        "--batch-size", 24, "--temporal-negatives", "--min-shift", 0.4, "--workers", 0, "--quiet", check=0,
    )
    avfeat("index", root / "cache", "--heads", root / "heads", "--out", root / "index", "--quiet", check=0)
    return root, Searcher(root / "index")


def _classes(folder):
    return {row["path"]: row["class"] for row in pq.read_table(folder / "ground_truth.parquet").to_pylist()}


@pytest.mark.parametrize("side", ["audio", "visual"])
def test_held_out_queries_find_their_class(setup, side):
    root, searcher = setup
    indexed, held = _classes(root / "train"), _classes(root / "held")
    hits = [searcher.search(root / "held" / name, side=side, k=1, rerank=20)[0] for name in held]
    accuracy = np.mean([indexed[os.path.basename(hit.path)] == held[name] for hit, name in zip(hits, held)])
    print(f"{side} → other side, class R@1 with rerank 20: {accuracy:.3f}")
    assert accuracy >= 0.9


def test_sync_recovers_injected_offsets(setup):
    root, searcher = setup
    truth = pq.read_table(root / "offsets" / "ground_truth.parquet").to_pylist()
    errors = [sync_file(root / "offsets" / row["path"], searcher.checkpoint, backbones=searcher.backbones).offset - row["offset"] for row in truth]
    within = np.mean(np.abs(errors) <= 0.2)
    print(f"sync within 0.2 s: {within:.3f}; errors {np.round(errors, 3).tolist()}")
    assert within >= 0.9


def test_locate_finds_source_and_time(setup, tmp_path):
    _, searcher = setup
    rng = np.random.default_rng(0)
    found = []
    for i, row in enumerate(searcher.cache.videos(status="ok")[:20]):
        start = round(float(rng.uniform(0.2, 1.8)), 2)
        with av.open(row["path"]) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0) if start - 1e-6 <= f.time < start + 2.0 - 1e-6])
        with av.open(row["path"]) as container:
            audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
        clip = tmp_path / f"clip{i}.mp4"
        write_media(clip, frames, 25, audio[int(start * 16000) : int((start + 2.0) * 16000)].astype(np.float32), 16000)
        best = searcher.locate(clip, k=1)[0]
        found.append(best.video_id == row["video_id"] and abs(best.time - start) <= 0.2)
    print(f"locate: {np.mean(found):.3f}")
    assert np.mean(found) >= 0.9
