"""`avfeat serve` batches concurrent vector and id searches (no rerank) into one FAISS search,
and each request gets exactly the hits it would get alone."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from avfeat.data.cache import Cache

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")


@pytest.fixture(scope="module")
def service(index):
    from avfeat.index.serve.service import Service

    return Service(index, device="cpu")


def _queries(service, cache) -> list:
    rng = np.random.default_rng(0)
    dim = service.searcher.meta["dim"]
    videos = [r.video_id for r in Cache(cache).records()]
    # Vectors that share a batch ask for the same modality and hit count.
    queries = [(rng.standard_normal(dim).tolist(), side, k, per_video, None) for side in ("audio", "visual")
               for k, per_video in ((1, False), (5, True), (3, False), (5, True), (3, False), (5, True))]
    queries += [(f"{video}@0.0-2.0", "audio", 5, True, video) for video in videos[:4]]
    return queries


def test_concurrent_searches_share_faiss_and_equal_unbatched(service, cache, monkeypatch):
    from avfeat.index.serve.batching import search

    queries = _queries(service, cache)
    alone = [service.search(q, side, k, 0, per_video, exclude, []) for q, side, k, per_video, exclude in queries]
    batches = []
    searched = service.searcher.search_vectors

    def counted(vectors, modality, k=10, where=None):
        batches.append(len(vectors))
        return searched(vectors, modality, k=k, where=where)

    monkeypatch.setattr(service.searcher, "search_vectors", counted)

    async def together():
        return await asyncio.gather(*(search(service, q, side, k, 0, per_video, exclude, []) for q, side, k, per_video, exclude in queries))

    assert asyncio.run(together()) == alone
    assert max(batches) > 1  # shared FAISS searches


def test_a_rerank_or_a_condition_is_not_batched(service, cache, monkeypatch):
    from avfeat.index.serve.batching import Batcher, search

    video = Cache(cache).records()[0].video_id

    def refused(*args):
        raise AssertionError("batched")

    monkeypatch.setattr(Batcher, "hits", refused)
    query = f"{video}@0.0-2.0"
    assert asyncio.run(search(service, query, "audio", 5, 4, True, None, [])) == service.search(query, "audio", 5, 4, True, None, [])
    where = [f"video_id={video}"]
    assert asyncio.run(search(service, query, "audio", 3, 0, False, None, where)) == service.search(query, "audio", 3, 0, False, None, where)
