"""Searches of `avfeat serve` that need no model work after their query vector (a vector query,
or an id query without rerank nor conditions) go to FAISS in batches: the vectors that arrive
within ``window`` seconds of each other, for the same modality and hit count, are one FAISS
search, off the model lock. A batch holds at most ``MOST`` vectors: below FAISS's BLAS threshold
(20 queries), a flat index scores each row as it would alone, so batched hits equal unbatched ones.
"""

from __future__ import annotations

import asyncio
import weakref

import anyio
import anyio.to_thread
import numpy as np

from avfeat.index.vector_search import keep_best
from avfeat.index.serve.service import SearchPlan, Service

DEFAULT_WINDOW = 0.002  # seconds a vector waits for others to join its batch
MOST = 16


class Batcher:
    """Vectors in, hit lists out: one ``searcher.search_vectors`` per batch, in a thread of its own."""

    def __init__(self, searcher, window: float = DEFAULT_WINDOW):
        self.searcher, self.window = searcher, window
        self.pending: dict[tuple[str, int], list] = {}
        self.limiter = anyio.CapacityLimiter(1)  # one FAISS batch at a time; FAISS threads within it

    async def hits(self, vector: np.ndarray, modality: str, k: int) -> list:
        """The top ``k`` hits of ``vector`` in ``modality``, as ``search_vectors`` gives them."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        group = self.pending.setdefault((modality, k), [])
        group.append((vector, future))
        if len(group) >= MOST:
            self._flush((modality, k), group)
        elif len(group) == 1:
            loop.call_later(self.window, self._flush, (modality, k), group)
        return await future

    def _flush(self, key: tuple[str, int], group: list) -> None:
        if self.pending.get(key) is group:
            del self.pending[key]
            asyncio.ensure_future(self._run(key, group))

    async def _run(self, key: tuple[str, int], group: list) -> None:
        vectors = np.concatenate([np.asarray(v, np.float32).reshape(1, -1) for v, _ in group])
        try:
            lists = await anyio.to_thread.run_sync(self.searcher.search_vectors, vectors, *key, limiter=self.limiter)
        except Exception as error:  # each request answers the error (a damaged index: one line)
            for _, future in group:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), hits in zip(group, lists):
            if not future.done():  # a request whose client left is cancelled
                future.set_result(hits)


# Per event loop, per service (as the model queue in ``queries``): futures belong to one loop.
_BATCHERS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.WeakKeyDictionary]" = weakref.WeakKeyDictionary()


def batcher(service: Service) -> Batcher:
    per_loop = _BATCHERS.setdefault(asyncio.get_running_loop(), weakref.WeakKeyDictionary())
    if service not in per_loop:
        per_loop[service] = Batcher(service.searcher, getattr(service, "batch_window", DEFAULT_WINDOW))
    return per_loop[service]


def batchable(plan: SearchPlan) -> bool:
    """Whether the rest of a search is FAISS alone: no rerank, no conditions."""
    return not plan.rerank and not plan.conditions


async def batched_hits(service: Service, plan: SearchPlan, k: int, one_per_video: bool, exclude_video: str | None) -> list:
    """``Searcher.best_hits`` of a batchable plan, each FAISS round batched with other requests'."""
    searcher, batches = service.searcher, batcher(service)
    if not one_per_video and exclude_video is None:
        return await batches.hits(plan.vector, plan.searched, k)
    for fetch in searcher.fetch_sizes(plan.searched, k):
        kept = keep_best(await batches.hits(plan.vector, plan.searched, fetch), k, one_per_video, exclude_video)
        if len(kept) >= k:
            break
    return kept


async def search(service: Service, query, side, k: int, rerank, one_per_video: bool, exclude_video, where) -> dict:
    """``Service.search``: its model work under the model lock (a vector's is a normalisation,
    but it queues with the rest: the lock is the service's one order of model requests), then
    its FAISS rounds batched, off the lock, when nothing follows them."""
    from avfeat.index.serve.queries import locked

    plan = await locked(service, service.plan_search, query, side, rerank, where)
    if batchable(plan):
        return service.answer(plan, await batched_hits(service, plan, k, one_per_video, exclude_video), k)

    def rest():
        hits = service.searcher.best_hits(plan.vector, plan.searched, max(k, plan.rerank), plan.conditions or None, one_per_video, exclude_video)
        return service.answer(plan, hits, k)

    return await locked(service, rest)
