"""A Python client for a running `avfeat serve` (standard library only: no avfeat models, no
FastAPI needed here)."""

from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from avfeat.core.errors import AvfeatError, QueryError


class RemoteError(AvfeatError):
    """An avfeat service answered a client call with an error."""


class Unreachable(RemoteError):
    """No avfeat service answered at the URL (refused, timed out, unknown host)."""


def _call(url: str, route: str, query, params: dict, token: str | None, timeout: float, allow_vector: bool = True):
    """POST ``query`` (a local file: uploaded; ``VIDEO_ID@START-END`` or ``VIDEO_ID``; a vector)
    to ``url + route`` with ``params`` in the query string; the JSON answer."""
    pairs = [(name, str(v).lower() if isinstance(v, bool) else str(v)) for name, value in params.items() if value is not None
             for v in (value if isinstance(value, (list, tuple)) else [value])]
    target = url.rstrip("/") + route + ("?" + urllib.parse.urlencode(pairs) if pairs else "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if isinstance(query, (str, os.PathLike)) and Path(query).is_file():
        boundary = secrets.token_hex(16)
        name = Path(query).name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + Path(query).read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    elif isinstance(query, (str, os.PathLike)):
        video, at, span = os.fspath(query).rpartition("@")
        start, _, end = span.partition("-")
        payload = {"video_id": video, "start": start, "end": end} if at and end else {"video_id": os.fspath(query)}
        body, headers["Content-Type"] = json.dumps(payload).encode(), "application/json"
    elif allow_vector:
        body, headers["Content-Type"] = json.dumps({"vector": [float(x) for x in list(query)]}).encode(), "application/json"
    else:
        raise QueryError(f"query must be a file or a video id, not {type(query).__name__}")
    request = urllib.request.Request(target, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read()).get("error") or error.reason
        except (ValueError, AttributeError):
            message = error.reason
        raise RemoteError(f"{target}: {error.code} {message}") from None
    except urllib.error.URLError as error:
        raise Unreachable(f"cannot reach {url}: {error.reason}") from None
    except (TimeoutError, ConnectionError) as error:  # raised while the answer is read
        raise Unreachable(f"cannot reach {url}: {error}") from None


def search_remote(url: str, query, k: int = 10, side: str | None = None, rerank: int = 0, one_per_video: bool = True,
                  exclude_video: str | None = None, where=None, token: str | None = None, timeout: float = 300) -> list[dict]:
    """Search a running `avfeat serve` (standard library only: no avfeat models needed here).

    Args:
        url: the service, e.g. ``http://127.0.0.1:8000``.
        query: a local media, audio or image file (uploaded), ``"VIDEO_ID@START-END"`` or
            ``"VIDEO_ID"`` of an indexed video, or a vector (a sequence of floats in the heads' space).
        side: the query's side (audio or visual); the other modality is searched.
        where: ``{"column": "value"}`` or ``["column=value", ...]`` metadata conditions.

    Returns:
        The hits: dicts with rank, score, video_id, start, end, metadata and media (the URL path
        that plays the hit).

    Raises:
        RemoteError: the service answered with an error (its one-line message) or is unreachable.
    """
    return search_answer(url, query, k, side, rerank, one_per_video, exclude_video, where, token, timeout)["hits"]


def search_answer(url: str, query, k: int = 10, side: str | None = None, rerank: int = 0, one_per_video: bool = True,
                  exclude_video: str | None = None, where=None, token: str | None = None, timeout: float = 300) -> dict:
    """``search_remote``'s whole answer: ``{"side": the query's side, "searched": ..., "hits": [...]}``."""
    if isinstance(where, dict):
        where = [f"{column}={value}" for column, value in where.items()]
    params = {"k": k, "side": side, "rerank": rerank, "one_per_video": one_per_video, "exclude_video": exclude_video, "where": where}
    return _call(url, "/api/search", query, params, token, timeout)


def sync_remote(url: str, video, max_offset: float = 2.0, token: str | None = None, timeout: float = 300) -> dict:
    """Offset of a local video file (uploaded) or an indexed video id: offset, confidence, lags, curve."""
    return _call(url, "/api/sync", video, {"max_offset": max_offset}, token, timeout, allow_vector=False)


def locate_remote(url: str, clip, k: int = 5, side: str | None = None, token: str | None = None, timeout: float = 300) -> list[dict]:
    """Where a local clip (uploaded) was cut from: candidates with video_id, time and votes."""
    return locate_answer(url, clip, k, side, token, timeout)["candidates"]


def locate_answer(url: str, clip, k: int = 5, side: str | None = None, token: str | None = None, timeout: float = 300) -> dict:
    """``locate_remote``'s whole answer: the candidates and the server's calibrated threshold."""
    return _call(url, "/api/locate", clip, {"k": k, "side": side}, token, timeout, allow_vector=False)
