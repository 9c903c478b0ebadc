"""Acceptance: max-mean heads find the right class on held-out videos, and beat mean-pool.

10 synthetic classes (chance 0.1). Class-level R@1: the top-1 window among all held-out
windows belongs to a video of the query's class. The recipe and the levels live in
``avfeat.testing.recipes`` (``ALIGN_*``, ``ACCEPTANCE_LEVELS``), shared with benchmarks/acceptance.py,
which runs it over 5 seeds: every level sits below the 5-seed minimum (README, "Acceptance").
Takes two to four minutes on a 2-core CPU: `make test-slow`.
"""

import time

import pytest

from avfeat.testing.recipes import ACCEPTANCE_LEVELS as LEVELS
from avfeat.testing.recipes import align_acceptance_cache, align_class_recall, train_align_heads

pytestmark = [pytest.mark.slow, pytest.mark.acceptance]


@pytest.fixture(scope="module")
def corpus_and_cache(tmp_path_factory):
    return align_acceptance_cache(tmp_path_factory.mktemp("acceptance"), seed=0)


def test_max_mean_reaches_its_class_r1_and_beats_mean_pool(corpus_and_cache, tmp_path):
    corpus, cache = corpus_and_cache
    found = {}
    for aggregation in ("max-mean", "mean-pool"):
        started = time.perf_counter()
        heads = train_align_heads(cache, tmp_path / aggregation, aggregation=aggregation, seed=0)
        found[aggregation] = align_class_recall(corpus, cache, heads)
        print(f"{aggregation}: class R@1 a2v {found[aggregation][0]:.3f} v2a {found[aggregation][1]:.3f} over {found[aggregation][2]} windows, {time.perf_counter() - started:.0f} s")
    a2v, v2a, windows = found["max-mean"]
    assert windows >= 150
    assert a2v >= LEVELS["align max-mean a2v"] and v2a >= LEVELS["align max-mean v2a"], found
    assert a2v - found["mean-pool"][0] >= LEVELS["align a2v max-mean minus mean-pool"], found
    assert v2a - found["mean-pool"][1] >= LEVELS["align v2a max-mean minus mean-pool"], found
