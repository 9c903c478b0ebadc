"""`avfeat search` reranks audio queries by default (their plain first stage compares mean-pooled
sounds with mean-pooled pictures); picture queries are not reranked unless asked."""

import json

from avfeat.index.vector_search import AUDIO_RERANK
from avfeat.testing.runner import run_avfeat as avfeat


def hits(index, query, *options):
    return [(h["video_id"], round(h["score"], 5)) for h in json.loads(avfeat("search", index, query, "-k", 3, "--json", *options, check=0).stdout)]


def test_audio_queries_are_reranked_by_default_and_rerank_0_turns_it_off(index, corpus):
    query = sorted(corpus.glob("*.mp4"))[0]
    default, reranked, plain = (hits(index, query, "--from", "audio", *flags) for flags in ([], ["--rerank", AUDIO_RERANK], ["--rerank", 0]))
    assert default == reranked and default != plain


def test_picture_queries_are_not_reranked_by_default(index, corpus):
    query = sorted(corpus.glob("*.mp4"))[0]
    assert hits(index, query, "--from", "visual") == hits(index, query, "--from", "visual", "--rerank", 0)
