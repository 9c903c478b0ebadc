"""Acceptance figures of retrieval, sync and locate on synthetic corpora, with heads from
`avfeat train-head`; one corpus, cache, heads and index shared by the module (about two to
three minutes on a 2-core CPU, most of it training: `make test-slow`).

The recipe, the checks and their levels live in ``avfeat.testing.recipes`` (``build_index_acceptance``,
``INDEX_RECIPE``, ``ACCEPTANCE_LEVELS``), shared with benchmarks/acceptance.py, which runs them
over 5 seeds: every level sits below the 5-seed minimum (README, "Acceptance"). Three held-out
corpora from `avfeat synth`, none of them trained on:
- ``held``: 30 videos of the training classes; each one's audio must find a video of its
  class at rank 1 in the visual index, and each one's pictures a video of its class in the
  audio index, both plain and with ``rerank``;
- ``offsets``: 20 videos of 10 s with offsets drawn from [-1, 1] s (``--offset 1.0``); ``sync_file``
  (what `avfeat sync` runs, with its default --max-offset 2) must recover them within one frame
  interval (0.2 s at --fps 5);
- 20 clips of 2 s cut (decoded and re-encoded) from indexed videos at random times: ``locate``
  (what `avfeat search --locate` runs) must name the source video and start within 0.2 s;
- 6 more offset videos: those whose offset sync recovers are repaired (`sync --fix`), and the
  repaired copies then sync to 0.
"""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from avfeat.testing.recipes import ACCEPTANCE_LEVELS as LEVELS
from avfeat.testing.recipes import INDEX_CLASSES, INDEX_RERANK, SYNC_SECONDS, SYNC_TOLERANCE, build_index_acceptance, corpus_classes, held_out_class_r1, held_out_tokens, locate_accuracy, sync_accuracy
from avfeat.index.sync import remux_shifted
from avfeat.testing.runner import run_avfeat as avfeat

pytestmark = [pytest.mark.slow, pytest.mark.acceptance]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("acceptance")
    return root, build_index_acceptance(root, seed=0)


@pytest.fixture(scope="module")
def held_out(setup):
    """Each held-out file's tokens, embedded once with the index's backbones."""
    root, searcher = setup
    return held_out_tokens(root, searcher)


@pytest.mark.parametrize("rerank", [0, INDEX_RERANK])
@pytest.mark.parametrize("side", ["audio", "visual"])
def test_held_out_queries_find_their_class(setup, held_out, side, rerank):
    root, searcher = setup
    share, queries = held_out_class_r1(root, searcher, held_out, side, rerank)
    print(f"{side} → {'visual' if side == 'audio' else 'audio'}, rerank {rerank}: class R@1 {share:.3f} over {queries} queries")
    metric = f"index {'a2v' if side == 'audio' else 'v2a'} {'rerank' if rerank else 'plain'}"
    assert queries == 30 and share >= LEVELS[metric]


def test_search_cli_with_rerank_finds_the_class(setup):
    root, _ = setup
    indexed, held = corpus_classes(root / "train"), corpus_classes(root / "held")
    name = sorted(held)[0]
    for side in ("audio", "visual"):
        hits = json.loads(avfeat("search", root / "index", root / "held" / name, "--from", side, "--rerank", INDEX_RERANK, "-k", 1, "--json", check=0, threads=1).stdout)
        assert indexed[os.path.basename(hits[0]["path"])] == held[name]


def test_sync_recovers_injected_offsets(setup):
    root, searcher = setup
    truth = pq.read_table(root / "offsets" / "ground_truth.parquet").to_pylist()
    assert max(abs(row["offset"]) for row in truth) > 0.9  # the corpus spans the range
    share, errors = sync_accuracy(root, searcher)
    print(f"sync within 0.2 s: {share:.3f} over {len(errors)} videos; errors {np.round(errors, 3).tolist()}")
    assert len(errors) == 20 and share >= LEVELS["index sync"]


def test_locate_finds_source_and_time(setup, tmp_path):
    _, searcher = setup
    share, clips = locate_accuracy(searcher, tmp_path)
    print(f"locate: {share:.3f} over {clips} clips")
    assert clips == 20 and share >= LEVELS["index locate"]


def test_fixed_videos_come_out_in_sync(setup, tmp_path):
    """6 more videos with offsets in [-1, 1] s: each one whose offset the heads recover is
    repaired (the CLI's `sync --fix` for the first, ``remux_shifted`` for the rest), and the
    repaired copy then measures 0 within SYNC_TOLERANCE."""
    root, _ = setup
    heads = root / "heads"
    avfeat("synth", tmp_path / "offsets", "--videos", 6, "--seconds", SYNC_SECONDS, "--seed", 2, "--offset", 1.0,
           "--classes", INDEX_CLASSES, "--size", 96, "--quiet", check=0)
    truth = {row["path"]: row["offset"] for row in pq.read_table(tmp_path / "offsets" / "ground_truth.parquet").to_pylist()}
    rows = [json.loads(line) for line in avfeat("sync", tmp_path / "offsets", "--heads", heads, "--json", "--quiet", check=0, threads=1).stdout.splitlines()]
    estimates = {row["video"].rsplit("/", 1)[-1]: row["offset"] for row in rows}
    recovered = [name for name in truth if abs(estimates[name] - truth[name]) <= SYNC_TOLERANCE and abs(truth[name]) > 0.3]
    assert len(recovered) >= 3, (truth, estimates)
    fixed = tmp_path / "fixed"
    avfeat("sync", tmp_path / "offsets" / recovered[0], "--heads", heads, "--fix", fixed / recovered[0], "--min-confidence", 0, check=0, threads=1)
    for name in recovered[1:]:
        remux_shifted(tmp_path / "offsets" / name, fixed / name, estimates[name])
    after = [json.loads(line) for line in avfeat("sync", fixed, "--heads", heads, "--json", "--quiet", check=0, threads=1).stdout.splitlines()]
    print(f"truth {truth}\nestimates {estimates}\nafter the fix {[row['offset'] for row in after]}")
    assert len(after) == len(recovered)
    assert all(abs(row["offset"]) <= SYNC_TOLERANCE for row in after), (estimates, after)
