"""`avfeat search --server URL`: the same queries and answers as a local search, asked of a
running `avfeat serve` (standard library and the client only: no torch, transformers or FAISS
here, so a query costs the round trip, not the models' load).

A server sends no paths: a hit's ``path`` is the URL that plays it (``URL/media/ID#t=S,E``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from avfeat.core.errors import InputError, QueryError
from avfeat.index.batch import QueryResult, read_query_list
from avfeat.index.hits import Hit
from avfeat.index.locate import Candidate
from avfeat.index.serve.client import RemoteError, Unreachable, locate_answer, search_answer

# Options that read the index, heads, cache or models here; the server has its own.
LOCAL_ONLY = ("--thumbs", "--mmap", "--cache", "--heads", "--device")


def refuse_local_options(given: list[str]) -> None:
    """One line naming the local-only options given with ``--server``."""
    if given:
        raise InputError(f"{', '.join(given)} need the index here; with --server the server's own index, heads and models answer: leave them out")


def _texts(query: list[str] | None, queries: Path | None) -> list[str]:
    """Every query, checked as a local search checks them (a file, or text with ``@``)."""
    texts = list(query or []) + (read_query_list(queries) if queries is not None else [])
    if not texts:
        raise InputError("no query: give QUERY arguments or --queries LIST")
    for text in texts:
        if Path(text).is_dir():
            raise QueryError(f"{text} is a folder: with --server give no INDEX (the server searches its own index), only queries")
        if not Path(text).is_file() and "@" not in text:
            raise QueryError(f"query {text!r} is neither a file nor VIDEO_ID@START-END (e.g. abc123@1:05-1:07)")
    return texts


def _hit(url: str, row: dict) -> Hit:
    return Hit(row["rank"], row["score"], row["video_id"], url + row["media"], row["start"], row["end"], row.get("metadata") or {})


def _answer(url: str, text: str, side, k, rerank, locate, where, per_video, exclude_video, token) -> QueryResult:
    if locate:
        answer = locate_answer(url, text, k=k, side=side, token=token)
        candidates = [Candidate(r["video_id"], url + r["media"], r["time"], r["votes"], r.get("score") or 0.0) for r in answer["candidates"]]
        return QueryResult(text, side or "audio+visual", [], candidates=candidates, threshold=answer.get("threshold"))
    answer = search_answer(url, text, k=k, side=side, rerank=rerank, one_per_video=per_video, exclude_video=exclude_video,
                           where=list(where or []), token=token)
    return QueryResult(text, answer["side"], [_hit(url, row) for row in answer["hits"]])


def search_queries_remote(url: str, query: list[str] | None = None, queries: Path | None = None, side: str | None = None,
                          k: int = 10, rerank: int = 0, locate: bool = False, where: list[str] | None = None,
                          per_video: bool = False, exclude_video: str | None = None,
                          token: str | None = None) -> Iterator[QueryResult]:
    """As ``avfeat.index.batch.search_queries``, answered by the `avfeat serve` at ``url``. In a
    batch a query the server refuses yields its ``error`` and the others go on; an unreachable
    server stops the batch (one line)."""
    if side not in (None, "audio", "visual"):
        raise InputError(f"--from must be audio or visual (got {side!r})")
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise InputError(f"--server takes the URL of a running `avfeat serve`, e.g. http://127.0.0.1:8000 (got {url!r})")
    texts = _texts(query, queries)
    batch = len(texts) > 1 or queries is not None
    for number, text in enumerate(texts):
        try:
            result = _answer(url, text, side, k, rerank, locate, where, per_video, exclude_video, token)
        except Unreachable:
            raise
        except RemoteError as error:
            if not batch:
                raise
            result = QueryResult(text, side or "audio", [], error=str(error))
        result.batch, result.first = batch, number == 0 or text == texts[0]
        yield result
