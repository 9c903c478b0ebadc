"""`avfeat serve INDEX`: a warm search service with a JSON API and a web page.

Loading the backbones, heads and FAISS indexes takes seconds to minutes; a query takes
milliseconds to a second once they are loaded. The service loads them once and answers:

    POST /api/search        a file (multipart field ``file``), JSON {video_id, start, end} or {vector}
    POST /api/sync          a video (upload) or JSON {video_id}: offset, confidence and the lag curve
    POST /api/locate        a clip (upload) or JSON {video_id, start, end}: where it was cut from
    GET  /api/videos        the indexed videos (ids, spans, metadata), paged
    GET  /api/videos/{id}   one video's metadata
    GET  /api/attention/{id}?time=T   PNG: where the sound of [T, T + window) is in the frame at T
    GET  /media/{id}        the video's file, with HTTP Range (the page plays /media/{id}#t=START,END)
    GET  /health, /metrics  liveness and Prometheus text
    GET  /                  the page (index/web/: every asset served from here, no CDN)

Safety: paths never come from a request (``/media`` looks the file up by video id in the index
table); hits carry no server paths; uploads go to a private temp folder removed after each
request, and a request body over ``--max-upload`` is refused (413) before or while it arrives;
a request's mistake is a 4xx JSON ``{"error": "one line"}``, an unexpected failure a 500 with
one line (the traceback goes to the server log only). Model work runs one request at a time
(a lock): torch and the lazily opened cache are not shared safely between threads, and on a
few cores one query at a time is as fast in total.

FastAPI and uvicorn are an optional extra (``pip install 'avfeat[serve]'``), imported only when
the service starts, so this module (the server and the ``search_remote`` client) loads without them.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations, and
# names imported inside ``create_app`` only resolve when annotations are evaluated in place.
import ipaddress
import json
import math
import mimetypes
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional

from avfeat.core.values import did_you_mean
from avfeat.core.errors import AvfeatError, CacheError, CheckpointError, InputError, QueryError, SearchIndexError

DEFAULT_MAX_UPLOAD = "200MB"
MAX_K = 1000
# Latency histogram buckets, seconds: from a cached-vector search to a long video's sync.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_COOKIE = "avfeat_token"
WEB_DIR = Path(__file__).resolve().parent / "web"
_SUFFIX = re.compile(r"^\.[a-z0-9]{1,8}$")


class UploadTooLarge(InputError):
    """A request body is larger than ``--max-upload``."""


class UnknownVideo(QueryError):
    """A video id that the index does not hold."""


class RemoteError(AvfeatError):
    """An avfeat service answered a client call with an error."""


# ---- metrics ----------------------------------------------------------------------------------


class Metrics:
    """Request counts, a latency histogram and error counts, in Prometheus' text format.

    Written by hand (a few counters need no library): ``render`` is what ``/metrics`` returns.
    Endpoints are route templates (``/media/{video_id}``), so one label per route, not per video.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.latency: dict[str, list[float]] = {}  # endpoint → bucket counts, then sum and count

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        with self.lock:
            key = (endpoint, method, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            row = self.latency.setdefault(endpoint, [0.0] * (len(BUCKETS) + 2))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    row[i] += 1
            row[-2] += seconds
            row[-1] += 1

    def error(self, endpoint: str, kind: str) -> None:
        with self.lock:
            self.errors[(endpoint, kind)] = self.errors.get((endpoint, kind), 0) + 1

    def render(self, gauges: dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]]) -> str:
        def labels(pairs) -> str:
            return "{" + ",".join(f'{name}="{_escape_label(value)}"' for name, value in pairs) + "}" if pairs else ""

        lines = [
            "# HELP avfeat_requests_total HTTP requests answered, by endpoint, method and status.",
            "# TYPE avfeat_requests_total counter",
        ]
        with self.lock:
            for (endpoint, method, status), count in sorted(self.requests.items()):
                lines.append(f"avfeat_requests_total{labels([('endpoint', endpoint), ('method', method), ('status', str(status))])} {count}")
            lines += [
                "# HELP avfeat_request_duration_seconds Time to answer a request, by endpoint.",
                "# TYPE avfeat_request_duration_seconds histogram",
            ]
            for endpoint, row in sorted(self.latency.items()):
                for bound, count in zip(BUCKETS, row):
                    lines.append(f"avfeat_request_duration_seconds_bucket{labels([('endpoint', endpoint), ('le', f'{bound:g}')])} {count:g}")
                lines.append(f"avfeat_request_duration_seconds_bucket{labels([('endpoint', endpoint), ('le', '+Inf')])} {row[-1]:g}")
                lines.append(f"avfeat_request_duration_seconds_sum{labels([('endpoint', endpoint)])} {row[-2]:.6f}")
                lines.append(f"avfeat_request_duration_seconds_count{labels([('endpoint', endpoint)])} {row[-1]:g}")
            lines += [
                "# HELP avfeat_errors_total Requests that failed, by endpoint and kind of error.",
                "# TYPE avfeat_errors_total counter",
            ]
            for (endpoint, kind), count in sorted(self.errors.items()):
                lines.append(f"avfeat_errors_total{labels([('endpoint', endpoint), ('type', kind)])} {count}")
        for name, (help_text, values) in gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            lines += [f"{name}{labels(pairs)} {value:g}" for pairs, value in values.items()]
        return "\n".join(lines) + "\n"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


# ---- the warm state ------------------------------------------------------------------------------


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
        from avfeat.index.vectors import MODALITIES

        self.searcher = Searcher(index, heads=heads, cache=cache, device=device)
        self.index_path = Path(index)
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
        try:
            return self.videos[video_id]
        except KeyError:
            raise UnknownVideo(f"video id {video_id!r} is not in the index{did_you_mean(video_id, self.videos, 'GET /api/videos lists the ids')}") from None

    def media_file(self, video_id: str) -> Path:
        """The local file of an indexed video (looked up by id, never taken from a request)."""
        path = self.video(video_id).path
        if "://" in path or not Path(path).is_file():
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
        return f"{video_id}@{_seconds(first)}-{_seconds(last)}"

    # ---- work (call with self.lock held: see the module docstring) ----

    def search(self, query, side: str | None, k: int, rerank: int, one_per_video: bool, exclude_video: str | None, where) -> dict:
        """Hits for a query: a file path or ``VIDEO_ID@START-END`` text, or a vector (a list).

        ``side`` is the query's side (as ``--from``); the other modality is searched.
        ``one_per_video`` keeps each video's best window only and ``exclude_video`` drops one
        video's windows: FAISS is asked for more hits until ``k`` are left (or none remain).
        """
        import numpy as np

        from avfeat.index.search import parse_where
        from avfeat.index.vectors import AUDIO, other

        conditions = parse_where(where)
        tokens = None
        if isinstance(query, list):
            if rerank:
                raise InputError("rerank needs the query's tokens; a vector query cannot be reranked (use rerank=0)")
            vector = np.asarray(query, dtype=np.float64)
            dim = self.searcher.meta["dim"]
            if vector.shape != (dim,) or not np.isfinite(vector).all() or not np.linalg.norm(vector) > 0:
                raise QueryError(f"vector must be {dim} finite numbers, not all zero (got {vector.size})")
            side = side or AUDIO
            vector = (vector / np.linalg.norm(vector)).astype(np.float32)[None]
        else:
            tokens = self.searcher.tokens(query)
            side = side or tokens.default_side()
            vector = self.searcher.embed(tokens, side)
        searched = other(side)
        self.searcher.matching_rows(searched, conditions)  # an unknown column is one line (400)
        hits = self.searcher.best_hits(vector, searched, max(k, rerank), conditions or None, one_per_video, exclude_video)
        if rerank:
            hits = self.searcher.rerank(tokens, side, hits, rerank)
        hits = hits[:k]
        return {
            "side": side,
            "searched": searched,
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
            self.video(query)
            result = sync_cached(self.cached(), query, self.searcher.heads, max_offset=max_offset)
        return {**result.to_dict(), "lags": [round(float(x), 4) for x in result.lags], "curve": _clean([float(x) for x in result.curve])}

    def locate(self, query, side: str | None, k: int) -> dict:
        self.cached()  # locate refines its candidates on the cached tokens
        candidates = self.searcher.locate(query, side=side, k=k)
        return {"candidates": [
            {"rank": rank, "video_id": c.video_id, "time": round(float(c.time), 4), "votes": int(c.votes),
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
        import torch
        from matplotlib import colormaps
        from PIL import Image
        from torch.nn import functional as F

        from avfeat.align.plots import decode_frame
        from avfeat.align.scores import token_map
        from avfeat.index.vectors import project_audio, project_visual

        info = self.video(video_id)
        cache = self.cached()
        for name, value in (("time", at), ("frame", frame_at)):
            if value is not None and not info.start - 1e-6 <= value <= info.end:
                raise QueryError(f"{name} {value:g} is outside video {video_id} ({info.start:.2f}-{info.end:.2f} s)")
        record = cache.ok_record(video_id)
        times = cache.frame_times(record)
        frame = int(np.argmin(np.abs(times - (at if frame_at is None else frame_at))))
        window = float(self.searcher.meta["window"])
        audio = cache.audio_tokens(video_id, start=at, end=at + window)
        if len(audio) == 0:
            raise QueryError(f"no audio tokens in [{at:g}, {at + window:g}) s of video {video_id}")
        heads = self.searcher.heads
        with torch.no_grad():
            values = token_map(project_audio(heads, audio), project_visual(heads, cache.read_frames(record, frame, frame + 1))[0]).float().cpu()
        grid = cache.config.get("visual_grid") or [int(round(len(values) ** 0.5))] * 2
        image = decode_frame(record.path, float(times[frame]), cache.config.get("frame_geometry", {})) if Path(record.path).is_file() else None
        size = image.shape[:2] if image is not None else (grid[0] * 16, grid[1] * 16)
        heat = F.interpolate(values.view(1, 1, *grid), size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
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
            "uptime_s": round(time.time() - self.started, 1),
        }


# ---- the app ------------------------------------------------------------------------------------


def _status_of(error: Exception) -> int:
    """The HTTP status of a user-facing error: the request's fault (4xx) or the server's state (503)."""
    if isinstance(error, UploadTooLarge):
        return 413
    if isinstance(error, UnknownVideo):
        return 404
    if isinstance(error, (CacheError, SearchIndexError, CheckpointError)):
        return 503  # the cache, index or heads behind the service cannot do this
    return 400


def _validation_message(error) -> str:
    """FastAPI's list of validation problems as one line: ``k (query): must be >= 1``."""
    parts = []
    for problem in error.errors()[:3]:
        where = [str(p) for p in problem.get("loc", ()) if p not in ("body",)]
        name = where[-1] if where else "request"
        place = f" ({where[0]})" if len(where) > 1 and where[0] in ("query", "path") else ""
        parts.append(f"{name}{place}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(service: Service, max_upload: int | str = DEFAULT_MAX_UPLOAD, token: str | None = None, hosts: Iterable[str] | None = None):
    """The ASGI app around a loaded ``Service``.

    ``max_upload``: the largest request body accepted (bytes, or a size such as ``200MB``).
    ``token``: when set, every request but ``/health`` and the page's static assets must carry
    it (``Authorization: Bearer TOKEN``, the cookie that ``/?token=TOKEN`` sets, or ``?token=``).
    ``hosts``: the names a request's Host header may give (None: any). A loopback server
    answers only to loopback names, so a web page cannot reach it by pointing a name of its own
    at 127.0.0.1 (DNS rebinding). Whatever ``hosts``, a request whose Origin header names
    another site than its Host is refused: a page elsewhere cannot post to the service.
    """
    from typing import Literal

    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, ConfigDict, ValidationError
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from avfeat.core.values import parse_size

    limit = parse_size(max_upload)
    allowed = None if hosts is None else {name.lower().strip("[]") for name in hosts}
    metrics = Metrics()
    app = FastAPI(
        title="avfeat",
        description="Cross-modal search, sync and locate over an avfeat index.",
        # No /docs or /redoc: FastAPI's pages load Swagger UI and ReDoc from a CDN, which an
        # offline machine cannot reach. The schema stays at /openapi.json.
        docs_url=None, redoc_url=None,
    )
    app.state.service = service

    def endpoint_of(scope) -> str:
        """The route template that serves ``scope`` (also for requests refused before routing)."""
        route = scope.get("route")
        if route is None:
            from starlette.routing import Match

            route = next((r for r in app.routes if r.matches(scope)[0] is Match.FULL), None)
        return getattr(route, "path", None) or "unmatched"

    def error_response(request_or_scope, status: int, message: str, kind: str) -> JSONResponse:
        scope = getattr(request_or_scope, "scope", request_or_scope)
        metrics.error(endpoint_of(scope), kind)
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(AvfeatError)
    async def _user_error(request: Request, error: AvfeatError):
        return error_response(request, _status_of(error), str(error), type(error).__name__)

    @app.exception_handler(RequestValidationError)
    async def _bad_parameters(request: Request, error: RequestValidationError):
        return error_response(request, 422, _validation_message(error), "RequestValidationError")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        return error_response(request, error.status_code, str(error.detail), f"HTTP{error.status_code}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        # Starlette raises the error on after this answer, so the server logs its traceback.
        return error_response(request, 500, f"internal error ({type(error).__name__}); the server log has the details", type(error).__name__)

    def authorised(scope, headers: dict[str, str], query: str) -> bool:
        if token is None:
            return True
        offered = [headers.get("authorization", "").removeprefix("Bearer ").strip()]
        offered += urllib.parse.parse_qs(query).get("token", [])
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == TOKEN_COOKIE:
                offered.append(urllib.parse.unquote(value))
        return any(item and secrets.compare_digest(item.encode(), token.encode()) for item in offered)

    class Guard:
        """Outermost ASGI layer: the token, the upload limit (by Content-Length, and by
        counting the body as it arrives when there is none) and the metrics of every request."""

        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            began = time.perf_counter()
            status = [500]

            async def sending(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            async def refuse(code: int, message: str, kind: str):
                response = error_response(scope, code, message, kind)
                await response(scope, receive, sending)

            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            path = scope.get("path", "")
            received = [0]

            async def counting():
                message = await receive()
                if message["type"] == "http.request":
                    received[0] += len(message.get("body", b""))
                    if received[0] > limit:
                        raise UploadTooLarge(f"the request body is larger than the server's limit of {limit} bytes (--max-upload)")
                return message

            try:
                host = headers.get("host", "")
                origin = headers.get("origin")
                if hosts is not None and _host_name(host) not in allowed:
                    await refuse(421, f"this server does not answer to the host {host!r} (serve --allow-host adds a name)", "MisdirectedRequest")
                elif origin is not None and urllib.parse.urlsplit(origin).netloc != host:
                    await refuse(403, f"requests from another site ({origin}) are refused", "CrossSiteRequest")
                elif path != "/health" and not path.startswith("/static/") and not authorised(scope, headers, scope.get("query_string", b"").decode("latin-1")):
                    await refuse(401, "this server needs its token: Authorization: Bearer TOKEN, or open /?token=TOKEN once", "Unauthorized")
                elif headers.get("content-length", "").isdigit() and int(headers["content-length"]) > limit:
                    await refuse(413, f"the request body ({headers['content-length']} bytes) is larger than the server's limit of {limit} bytes (--max-upload)", "UploadTooLarge")
                else:
                    await self.inner(scope, counting, sending)
            finally:
                metrics.observe(endpoint_of(scope), scope.get("method", ""), status[0], time.perf_counter() - began)

    # ---- reading a query ----

    class SpanBody(BaseModel):
        """JSON query: an indexed video's span (times: seconds, m:ss or h:mm:ss; default: all
        of it), or a vector in the heads' space."""

        model_config = ConfigDict(extra="forbid")
        video_id: Optional[str] = None
        start: Optional[float | str] = None
        end: Optional[float | str] = None
        vector: Optional[List[float]] = None

    async def read_body(request: Request) -> SpanBody:
        try:
            return SpanBody.model_validate(json.loads(await request.body() or b"null"))
        except ValueError as error:  # bad JSON, or pydantic's ValidationError (a ValueError)
            raise QueryError(_validation_message(error) if isinstance(error, ValidationError) else f"the body is not JSON: {error}") from None

    def content_type(request: Request) -> str:
        return request.headers.get("content-type", "").split(";")[0].strip().lower()

    async def read_query(request: Request, folder: Path, allow_vector: bool):
        """The request's query: a saved upload (Path), ``VIDEO_ID@START-END`` text, or a vector
        (list). An upload is written to ``folder`` under a fixed name (only its suffix kept:
        the suffix tells an image, a sound or a video apart)."""
        kind = content_type(request)
        if kind == "multipart/form-data":
            form = await request.form(max_files=1, max_fields=16)
            try:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise InputError("the multipart body needs a file in the field 'file'")
                suffix = Path(upload.filename or "").suffix.lower()
                target = folder / ("query" + (suffix if _SUFFIX.match(suffix) else ""))
                with open(target, "wb") as out:
                    await run_in_threadpool(shutil.copyfileobj, upload.file, out, 1 << 20)
                if target.stat().st_size == 0:
                    raise QueryError("the uploaded file is empty")
                return target
            finally:
                await form.close()
        if kind == "application/json":
            body = await read_body(request)
            if (body.vector is None) == (body.video_id is None):
                raise QueryError("give either video_id (with optional start and end) or vector" if allow_vector else "give video_id (with optional start and end)")
            if body.vector is not None:
                if not allow_vector:
                    raise QueryError("this endpoint takes a file or a video_id, not a vector")
                return list(body.vector)
            return service.id_query(body.video_id, body.start, body.end)
        raise InputError("send a file (multipart/form-data, field 'file') or JSON ({video_id, start, end}" + (" or {vector}" if allow_vector else "") + ")")

    async def locked(work, *args):
        """``work(*args)`` in a worker thread, one at a time (see the module docstring)."""
        def run():
            with service.lock:
                return work(*args)

        return await run_in_threadpool(run)

    async def run_query(request: Request, allow_vector: bool, work):
        """Read the request's query into a private temp folder (removed whatever happens), then
        run ``work(query)`` under the model lock. Messages name an upload "the uploaded file",
        not its temp path."""
        with tempfile.TemporaryDirectory(prefix="avfeat-serve-") as folder:
            try:
                query = await read_query(request, Path(folder), allow_vector)
                return await locked(work, query)
            except AvfeatError as error:
                message = re.sub(r"(query )?" + re.escape(os.path.join(folder, "query")) + r"(\.[a-z0-9]+)?", "the uploaded file", str(error))
                if message == str(error):
                    raise
                raise type(error)(message) from None

    Side = Optional[Literal["audio", "visual"]]
    body_doc = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}, "required": ["file"]}},
        "application/json": {"schema": SpanBody.model_json_schema()},
    }}}

    # ---- routes ----

    @app.post("/api/search", openapi_extra=body_doc, summary="Search with a file, a video span or a vector")
    async def api_search(
        request: Request,
        k: int = Query(10, ge=1, le=MAX_K, description="Hits to return."),
        side: Side = Query(None, description="The query's side (audio or visual; default: audio when it has sound); the other modality is searched."),
        rerank: int = Query(0, ge=0, le=MAX_K, description="Rescore the top N hits with the heads' exact clip score (needs the cache)."),
        one_per_video: bool = Query(True, description="Keep only each video's best window."),
        exclude_video: Optional[str] = Query(None, description="Leave this video's windows out (e.g. the query's own)."),
        where: List[str] = Query([], description="COLUMN=VALUE metadata conditions, all required (repeat the parameter)."),
    ):
        from avfeat.index.search import parse_where

        if exclude_video is not None:
            service.video(exclude_video)
        service.searcher.matching_rows("audio", parse_where(where))  # a bad condition is refused before any upload is read
        return await run_query(request, True, lambda query: service.search(
            str(query) if isinstance(query, Path) else query, side, k, rerank, one_per_video, exclude_video, where))

    @app.post("/api/sync", openapi_extra=body_doc, summary="Audio-visual offset of a video (positive: audio late)")
    async def api_sync(request: Request, max_offset: float = Query(2.0, gt=0, le=30, description="Largest offset searched, seconds either way.")):
        if content_type(request) == "application/json":  # an indexed video: its cached tokens
            body = await read_body(request)
            if body.video_id is None:
                raise QueryError("give video_id, or upload a video")
            return await locked(service.sync, body.video_id, max_offset)
        return await run_query(request, False, lambda query: service.sync(query, max_offset))

    @app.post("/api/locate", openapi_extra=body_doc, summary="The video and time a clip was cut from")
    async def api_locate(
        request: Request,
        k: int = Query(5, ge=1, le=100, description="Candidates to return."),
        side: Side = Query(None, description="Vote with one side only (default: both)."),
    ):
        return await run_query(request, False, lambda query: service.locate(str(query), side, k))

    @app.get("/api/videos", summary="The indexed videos, in id order")
    def api_videos(offset: int = Query(0, ge=0), limit: int = Query(1000, ge=1, le=10000), prefix: str = Query("", description="Only ids starting with this.")):
        ids = [v for v in service.videos if v.startswith(prefix)]
        return {"total": len(ids), "videos": [service.videos[v].public() for v in ids[offset : offset + limit]]}

    @app.get("/api/videos/{video_id}", summary="One video's span, window count and metadata")
    def api_video(video_id: str):
        info = service.video(video_id).public()
        try:
            record = service.cached().record(video_id)
            info.update(duration=record.duration, fps=record.fps, width=record.width, height=record.height, status=record.status)
        except CacheError:
            pass  # the cache is gone: what the index table holds is still worth showing
        info["media"] = media_url(video_id) if _is_local_file(service.video(video_id).path) else None
        return info

    @app.get("/api/attention/{video_id}", summary="PNG: where the sound of [time, time + window) is in the frame at time",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def api_attention(
        video_id: str,
        time_s: float = Query(..., alias="time", ge=0, description="Start of the audio window, seconds on the video's timeline."),
        frame: Optional[float] = Query(None, ge=0, description="Time of the frame drawn (default: time), e.g. the middle of a hit."),
    ):
        return Response(await locked(service.attention_png, video_id, time_s, frame), media_type="image/png")

    @app.get("/media/{video_id}", summary="The video's file (HTTP Range supported); play a hit with /media/ID#t=START,END")
    def media(video_id: str):
        path = service.media_file(video_id)  # by id from the index table: never a path from the request
        return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")

    app.head("/media/{video_id}", include_in_schema=False)(media)

    @app.get("/health")
    def health():
        return service.health()

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus():
        gauges = {
            "avfeat_index_windows": ("Windows in the index, by modality.", {(("modality", m),): float(n) for m, n in service.counts.items()}),
            "avfeat_index_videos": ("Videos in the index.", {(): float(len(service.videos))}),
            "avfeat_uptime_seconds": ("Seconds since the service started.", {(): time.time() - service.started}),
        }
        return PlainTextResponse(metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    def page(request: Request):
        given = request.query_params.get("token")
        if token is not None and given:
            # The page's fetches and <video> requests then carry the token as a cookie.
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict")
            return response
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    app.state.metrics = metrics
    return Guard(app)


def _is_local_file(path: str) -> bool:
    return "://" not in path and Path(path).is_file()


# ---- the command ---------------------------------------------------------------------------------


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _host_name(header: str) -> str:
    """The name in a Host header (``name``, ``name:port``, ``[v6]:port``), lower case."""
    try:
        return (urllib.parse.urlsplit("//" + header).hostname or "").lower()
    except ValueError:
        return ""


def served_hosts(host: str, extra: Iterable[str] = ()) -> list[str] | None:
    """The Host names a server listening on ``host`` answers to: on loopback, the loopback names
    (and ``extra``); elsewhere any (None), unless ``extra`` names them."""
    if _loopback(host):
        return [*LOOPBACK_NAMES, host, *extra]
    return [host, *extra] if extra else None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(
    index_dir: Path,
    cache: Optional[Path] = None,
    heads: Optional[Path] = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    max_upload: str = DEFAULT_MAX_UPLOAD,
    token: Optional[str] = None,
    allow_host: Iterable[str] = (),
    quiet: bool = False,
    say: Optional[Callable[[str], None]] = None,
) -> None:
    """`avfeat serve`: load the service for ``index_dir`` and answer on ``host:port`` until
    stopped. ``say`` gets the lines for the console (a note on what is off, where it listens)
    before the server starts; ``quiet`` drops the access log.

    Raises:
        InputError: FastAPI or uvicorn is missing, or ``host`` is beyond loopback without ``token``.
    """
    from avfeat.core.devices import resolve_device
    from avfeat.core.values import parse_size

    say = say or (lambda line: None)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise InputError("avfeat serve needs FastAPI and uvicorn: pip install 'avfeat[serve]'") from None
    if not _loopback(host) and not token:
        raise InputError(f"--host {host} lets other machines in: give --token (or AVFEAT_SERVE_TOKEN), or listen on 127.0.0.1")
    limit = parse_size(max_upload)
    service = Service(index_dir, heads=heads, cache=cache, device=str(resolve_device(device)))
    if service.cache_problem:
        say(f"note: {service.cache_problem}; VIDEO_ID queries, rerank, locate and attention maps are off")
    app = create_app(service, max_upload=limit, token=token, hosts=served_hosts(host, allow_host))
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    say(f"avfeat serve: {index_dir} ({len(service.videos)} videos) on http://{shown}:{port}/ (API schema: /openapi.json)")
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info", access_log=not quiet)


# ---- client ---------------------------------------------------------------------------------------


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
        raise RemoteError(f"cannot reach {url}: {error.reason}") from None


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
    if isinstance(where, dict):
        where = [f"{column}={value}" for column, value in where.items()]
    params = {"k": k, "side": side, "rerank": rerank, "one_per_video": one_per_video, "exclude_video": exclude_video, "where": where}
    return _call(url, "/api/search", query, params, token, timeout)["hits"]


def sync_remote(url: str, video, max_offset: float = 2.0, token: str | None = None, timeout: float = 300) -> dict:
    """Offset of a local video file (uploaded) or an indexed video id: offset, confidence, lags, curve."""
    return _call(url, "/api/sync", video, {"max_offset": max_offset}, token, timeout, allow_vector=False)


def locate_remote(url: str, clip, k: int = 5, side: str | None = None, token: str | None = None, timeout: float = 300) -> list[dict]:
    """Where a local clip (uploaded) was cut from: candidates with video_id, time and votes."""
    return _call(url, "/api/locate", clip, {"k": k, "side": side}, token, timeout, allow_vector=False)["candidates"]
