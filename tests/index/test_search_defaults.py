"""`avfeat search` reranks queries from either side by default (their plain first stage compares
pooled vectors, mostly background); `--rerank 0` turns it off."""

import json

import pytest

from avfeat.index.vector_search import DEFAULT_RERANK
from avfeat.testing.runner import run_avfeat as avfeat


def hits(index, query, *options):
    return [(h["video_id"], round(h["score"], 5)) for h in json.loads(avfeat("search", index, query, "-k", 3, "--json", *options, check=0).stdout)]


@pytest.mark.parametrize("side", ["audio", "visual"])
def test_queries_are_reranked_by_default_and_rerank_0_turns_it_off(index, corpus, side):
    query = sorted(corpus.glob("*.mp4"))[0]
    default, reranked, plain = (hits(index, query, "--from", side, *flags) for flags in ([], ["--rerank", DEFAULT_RERANK], ["--rerank", 0]))
    assert default == reranked and default != plain
