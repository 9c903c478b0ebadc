"""Stage 3: FAISS indexes, retrieval and synchronization search.

``Searcher`` is imported on first use, so `avfeat --help` does not load torch or faiss.
"""


def __getattr__(name):
    if name == "Searcher":
        from avfeat.index.search import Searcher

        return Searcher
    raise AttributeError(name)
