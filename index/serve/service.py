"""The warm state of `avfeat serve`: backbones, heads, FAISS indexes and tables loaded once, and
the work behind each endpoint (search, sync, locate, attention maps, health).

Model work runs one request at a time: callers hold ``Service.lock`` (torch and the lazily
opened cache are not shared safely between threads, and on a few cores one query at a time is
as fast in total).
"""

from __future__ import annotations

import math
import os
import threading
import time
import unicodedata
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avfeat.core.errors import CacheError, InputError, QueryError
from avfeat.data.cache import UnknownVideoName, resolve_video_name


class UnknownVideo(QueryError):
    """A video id that the index does not hold."""


SHOWN_ID = 80  # characters of an unknown id that a message echoes


def shown_id(video_id: str) -> str:
    """An id as a message may quote it: escaped (repr) and cut to its first ``SHOWN_ID`` characters."""
    return repr(video_id[:SHOWN_ID]) + (f"... ({len(video_id)} characters)" if len(video_id) > SHOWN_ID else "")


def check_video_id(video_id: str) -> None:
    """Refuse an id with control or format (bidi) characters: no index holds one, and a log or
    a page showing it could be made to lie."""
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in video_id):
        raise QueryError(f"video id {shown_id(video_id)} has control or bidi characters; no indexed id has them")


@dataclass
class VideoInfo:
    """One indexed video, from the index table: what the API may show, and its file."""

    video_id: str
    path: str  # never sent to clients
    start: float  # first window start, seconds on the file's timeline
    end: float  # last window end
    windows: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        return {"video_id": self.video_id, "start": self.start, "end": self.end, "windows": self.windows, "metadata": _clean(self.metadata)}


def _clean(value):
    """JSON-safe: non-finite floats become null (JSON has no NaN), containers recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)  # dates, decimals, bytes...: shown as text


def _seconds(value: float) -> str:
    """Seconds as short text for ``VIDEO_ID@START-END`` (``1.5``, not ``1.500000``)."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


def media_url(video_id: str, start: float | None = None, end: float | None = None) -> str:
    """The ``/media`` URL of a video, with a media fragment (``#t=START,END``) that a browser's
    ``<video>`` starts (and stops) playing at."""
    url = f"/media/{urllib.parse.quote(video_id, safe='')}"
    if start is not None:
        url += f"#t={start:.3f}" + (f",{end:.3f}" if end is not None else "")
    return url


def _private_paths(*given) -> list[str]:
    """The server's folders as messages may spell them (given, absolute, resolved; the longest
    first so that a folder inside another goes whole), from the arguments and the index's meta."""
    meta = given[-1]
    found = [*given[:-1], (meta.get("cache") or {}).get("path"), (meta.get("heads") or {}).get("path")]
    paths = set()
    for path in found:
        if not isinstance(path, (str, os.PathLike)) or str(path) in ("", ".", "/"):
            continue
        for spelled in (str(path), str(Path(path).absolute()), str(Path(path).resolve())):
            paths.add(spelled.rstrip("/") or spelled)
    return sorted(paths, key=len, reverse=True)


def is_local_file(path: str) -> bool:
    """Whether a video's recorded path is a file on this server (not a URL, not gone)."""
    return "://" not in path and Path(path).is_file()


@dataclass
class SearchPlan:
    """A search after its model work: the query vector, its side, the side searched, the rerank."""

    vector: Any
    side: str
    searched: str
    rerank: int
    conditions: list
    tokens: Any = None


class Service:
    """Backbones, heads, FAISS indexes and tables, loaded once; the work behind each endpoint.

    Args:
        index: the folder written by ``avfeat index``.
        heads, cache: as ``Searcher`` (default: the ones meta.json records). A cache that is
            gone only disables what needs it (``VIDEO_ID`` queries, rerank, locate, attention
            maps): those answer 503 saying so.
        device: where the backbones embed uploads.
        warm: load everything now (default) rather than on the first request.
    """

    def __init__(self, index, heads=None, cache=None, device: str = "cpu", warm: bool = True):
        from avfeat.index.search import Searcher
        from avfeat.index.hits import MODALITIES

        self.searcher = Searcher(index, heads=heads, cache=cache, device=device)
        self.index_path = Path(index)
        self.private_paths = _private_paths(index, heads, cache, self.searcher.meta)
        self.device = device
        self.lock = threading.Lock()
        self.started = time.time()
        self.cache_problem: str | None = None
        self.counts = {m: self.searcher.folder.count(m) for m in MODALITIES}
        self.videos = self._videos()
        if warm:
            for modality in MODALITIES:
                self.searcher.folder.faiss_index(modality)
            self.searcher.backbones.encoder  # noqa: B018 (loads the models now, not on the first upload)
        try:
            self.searcher.cache  # noqa: B018 (opened and checked now: a wrong cache fails the start)
        except CacheError as error:
            self.cache_problem = str(error)

    def _videos(self) -> dict[str, VideoInfo]:
        """Each video of the index: its first window's row (path, metadata), span and window count."""
        import pyarrow as pa

        from avfeat.index.store import TABLE_COLUMNS

        table = self.searcher.folder.table("audio")
        if table.num_rows == 0:
            return {}
        grouped = table.group_by("video_id").aggregate([("id", "min"), ("start", "min"), ("end", "max"), ("id", "count")])
        firsts = table.take(pa.array(grouped.column("id_min").to_numpy(), pa.int64())).to_pylist()
        videos = {}
        for row, start, end, count in zip(firsts, grouped.column("start_min").to_pylist(), grouped.column("end_max").to_pylist(), grouped.column("id_count").to_pylist()):
            metadata = {name: value for name, value in row.items() if name not in TABLE_COLUMNS}
            videos[row["video_id"]] = VideoInfo(row["video_id"], row["path"], float(start), float(end), int(count), metadata)
        return dict(sorted(videos.items()))

    # ---- lookups ----

    def video(self, video_id: str) -> VideoInfo:
        info = self.videos.get(video_id)
        if info is not None:
            return info
        check_video_id(video_id)
        hint = "GET /api/videos lists the ids"
        if len(video_id) <= 4 * SHOWN_ID:  # a long one is no typo (and costly to compare)
            try:  # a file name or stem that names one video (ids are stem-<hash>)
                names = {v: Path(known.path).name for v, known in self.videos.items()}  # the server's folders stay private
                return self.videos[resolve_video_name(video_id, names, hint)]
            except UnknownVideoName as error:
                if error.ambiguous:
                    raise QueryError(f"{shown_id(video_id)} names {len(error.candidates)} videos ({', '.join(error.candidates[:5])}); give one video id") from None
                hint = f"did you mean {', '.join(error.candidates)}?" if error.candidates else hint
        raise UnknownVideo(f"video id {shown_id(video_id)} is not in the index; {hint}")

    def hide_paths(self, message: str) -> str:
        """``message`` without the server's folders (index, cache, heads): a client sees their names only."""
        for path in self.private_paths:
            message = message.replace(path, f"<{Path(path).name}>")
        return message

    def media_file(self, video_id: str) -> Path:
        """The local file of an indexed video (looked up by id, never taken from a request)."""
        path = self.video(video_id).path
        if not is_local_file(path):
            raise UnknownVideo(f"the file of video {video_id!r} is not available on this server")
        return Path(path)

    def cached(self):
        """The cache, or CacheError (503) saying why it is not at hand."""
        if self.cache_problem:
            raise CacheError(f"this needs the index's cache, which is not available: {self.cache_problem}")
        return self.searcher.cache

    def id_query(self, video_id: str, start, end) -> str:
        """``VIDEO_ID@START-END`` text for ``Searcher``; a missing start or end is the video's."""
        from avfeat.core.values import parse_time

        info = self.video(video_id)
        self.cached()
        first = info.start if start in (None, "") else parse_time(start)
        last = info.end if end in (None, "") else parse_time(end)
        if not last > first:
            raise QueryError(f"end ({last:g} s) must be after start ({first:g} s)")
        return f"{info.video_id}@{_seconds(first)}-{_seconds(last)}"

    # ---- work (call with self.lock held: see the module docstring) ----

    def search(self, query, side: str | None, k: int, rerank: int | None, one_per_video: bool, exclude_video: str | None, where) -> dict:
        """Hits for a query: a file path or ``VIDEO_ID@START-END`` text, or a vector (a list).

        ``side`` is the query's side (as ``--from``); the other modality is searched.
        ``one_per_video`` keeps each video's best window only and ``exclude_video`` drops one
        video's windows: FAISS is asked for more hits until ``k`` are left (or none remain).
        """
        plan = self.plan_search(query, side, rerank, where)
        hits = self.searcher.best_hits(plan.vector, plan.searched, max(k, plan.rerank), plan.conditions or None, one_per_video, exclude_video)
        return self.answer(plan, hits, k)

    def plan_search(self, query, side: str | None, rerank: int | None, where) -> SearchPlan:
        """A search's query vector, sides and rerank (the model work before FAISS; none for a vector)."""
        from avfeat.index.query import unit_vector
        from avfeat.index.vector_search import parse_where
        from avfeat.index.hits import AUDIO, other

        conditions = parse_where(where)
        tokens = None
        if isinstance(query, list):
            if rerank:
                raise InputError("rerank needs the query's tokens; a vector query cannot be reranked (use rerank=0)")
            rerank = 0
            vector = unit_vector(query, self.searcher.meta["dim"])
            side = side or AUDIO
        else:
            tokens = self.searcher.tokens(query)
            side = side or tokens.default_side()
            vector = self.searcher.embed(tokens, side)
        if rerank is None:  # as `avfeat search`: queries rerank when the cache is there
            rerank = self.searcher.default_rerank()
        searched = other(side)
        self.searcher.matching_rows(searched, conditions)  # an unknown column is one line (400)
        return SearchPlan(vector, side, searched, rerank, conditions, tokens)

    def answer(self, plan: SearchPlan, hits: list, k: int) -> dict:
        """The JSON of a search: ``hits`` reranked as ``plan`` says (model work when it does), cut to ``k``."""
        if plan.rerank:
            hits = self.searcher.rerank(plan.tokens, plan.side, hits, plan.rerank)
        hits = hits[:k]
        return {
            "side": plan.side,
            "searched": plan.searched,
            "hits": [
                {"rank": rank, "score": _clean(float(hit.score)), "video_id": hit.video_id, "start": hit.start, "end": hit.end,
                 "metadata": _clean(hit.metadata), "media": media_url(hit.video_id, hit.start, hit.end)}
                for rank, hit in enumerate(hits, 1)
            ],
        }

    def sync(self, query, max_offset: float) -> dict:
        """Offset and lag curve of a video file, or of an indexed video (``query`` = its id)."""
        from avfeat.index.sync import sync_cached, sync_file

        if isinstance(query, Path):
            result = sync_file(query, self.searcher.checkpoint, max_offset=max_offset, backbones=self.searcher.backbones)
        else:
            result = sync_cached(self.cached(), self.video(query).video_id, self.searcher.heads, max_offset=max_offset)
        return {**result.to_dict(), "lags": [round(float(x), 4) for x in result.lags], "curve": _clean([float(x) for x in result.curve])}

    def locate(self, query, side: str | None, k: int) -> dict:
        from avfeat.index.locate import clip_seconds

        self.cached()  # locate refines its candidates on the cached tokens
        tokens = self.searcher.tokens(query)
        candidates = self.searcher.locate(tokens, side=side, k=k)
        # The score a candidate must reach (calibrated once per sides and length, then kept).
        threshold = self.searcher.locate_threshold([side] if side else tokens.sides(), clip_seconds(tokens))
        return {"threshold": _clean(float(threshold)), "candidates": [
            {"rank": rank, "video_id": c.video_id, "time": round(float(c.time), 4), "votes": int(c.votes), "score": _clean(float(c.score)),
             "metadata": _clean(self.videos[c.video_id].metadata) if c.video_id in self.videos else {},
             "media": media_url(c.video_id, float(c.time))}
            for rank, c in enumerate(candidates, 1)
        ]}

    def attention_png(self, video_id: str, at: float, frame_at: float | None = None) -> bytes:
        """PNG: the frame nearest ``frame_at`` (default ``at``) as the visual model saw it, each
        patch tinted by its best cosine with the audio tokens of [at, at + window) (as `avfeat
        attention-map`). The tint's opacity grows with the score, so the frame shows through
        where the sound is not and the sound's source stands out."""
        import io

        import numpy as np
        from matplotlib import colormaps
        from PIL import Image

        from avfeat.align.plots import attention_heat

        info = self.video(video_id)
        for name, value in (("time", at), ("frame", frame_at)):
            if value is not None and not info.start - 1e-6 <= value <= info.end:
                raise QueryError(f"{name} {value:g} is outside video {info.video_id} ({info.start:.2f}-{info.end:.2f} s)")
        drawn = attention_heat(self.searcher.heads, self.cached(), info.video_id, at, float(self.searcher.meta["window"]), frame_at)
        heat, image = drawn.heat, drawn.image
        span = float(heat.max() - heat.min())
        level = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
        colours = colormaps["jet"](level)[..., :3]
        if image is None:
            picture = colours
        else:
            opacity = (0.75 * level**1.5)[..., None]
            picture = (1 - opacity) * (np.asarray(image, dtype=np.float64) / 255.0) + opacity * colours
        buffer = io.BytesIO()
        Image.fromarray((np.clip(picture, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    def health(self) -> dict:
        return {
            "status": "ok", "index": self.index_path.name, "videos": len(self.videos), "windows": self.counts,
            "window": self.searcher.meta["window"], "device": self.device, "cache": self.cache_problem is None,
            "uptime_s": round(time.time() - self.started, 1), "pid": os.getpid(),
        }
