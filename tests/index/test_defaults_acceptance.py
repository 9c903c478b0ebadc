"""What a new user gets with no options: the 80-video synthetic corpus (4 s videos, 8 classes)
through `avfeat extract` (the tiny offline backbones, the default 2 fps), `train-head` and `index` with no
flags, then search with its default rerank and `sync` with its defaults, checked on corpora
never trained on (``avfeat.testing.recipes.build_defaults_acceptance``; about three minutes on a
2-core CPU: `make test-slow`). Levels and the figures over seeds: ``ACCEPTANCE_LEVELS``, docs/benchmarks.md."""

import pytest

from avfeat.testing.recipes import ACCEPTANCE_LEVELS as LEVELS
from avfeat.testing.recipes import build_defaults_acceptance, held_out_class_r1, held_out_tokens, sync_accuracy

pytestmark = [pytest.mark.slow, pytest.mark.acceptance]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("defaults")
    return root, build_defaults_acceptance(root, seed=0)


@pytest.mark.parametrize("side", ["audio", "visual"])
def test_held_out_queries_find_their_class_with_no_options(setup, side):
    root, searcher = setup
    tokens = held_out_tokens(root, searcher)
    share, queries = held_out_class_r1(root, searcher, tokens, side, rerank=None)  # None: the CLI's default rerank
    print(f"defaults, {side} queries: class R@1 {share:.3f} over {queries}")
    assert queries == 30 and share >= LEVELS[f"defaults {'a2v' if side == 'audio' else 'v2a'}"]


def test_sync_with_no_options(setup):
    root, searcher = setup
    share, errors = sync_accuracy(root, searcher)
    print(f"defaults, sync within 0.2 s: {share:.3f}; errors {[round(e, 2) for e in errors]}")
    assert len(errors) == 20 and share >= LEVELS["defaults sync"]
