"""Stage 3: FAISS indexes, retrieval and synchronization search.

``Searcher`` and ``SpanSearcher`` are imported on first use, so `avfeat --help` does not load
torch or faiss.
"""


def __getattr__(name):
    if name == "Searcher":
        from avfeat.index.search import Searcher

        return Searcher
    if name == "SpanSearcher":
        from avfeat.index.span_search import SpanSearcher

        return SpanSearcher
    raise AttributeError(name)
