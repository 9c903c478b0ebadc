"""The endpoints of `avfeat serve`, in groups: queries (search, sync, locate), videos (listing,
metadata, attention maps, media files), the service's state (health, metrics) and the page.

Paths never come from a request: ``/media`` looks the file up by video id in the index table,
and hits carry no server paths.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations.
import mimetypes
from pathlib import Path
from typing import List, Literal, Optional

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from avfeat.core.errors import CacheError, QueryError
from avfeat.index.serve.access import TOKEN_COOKIE
from avfeat.index.serve.batching import search as batched_search
from avfeat.index.serve.metrics import CONTENT_TYPE, Metrics
from avfeat.index.serve.queries import SpanBody, content_type, locked, read_body, run_query
from avfeat.index.serve.service import Service, is_local_file, media_url

MAX_K = 1000
WEB_DIR = Path(__file__).resolve().parent.parent / "web"  # avfeat.index's package data: index.html, app.js, style.css

Side = Optional[Literal["audio", "visual"]]
BODY_DOC = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}, "required": ["file"]}},
    "application/json": {"schema": SpanBody.model_json_schema()},
}}}


def add_query_routes(app: FastAPI, service: Service) -> None:
    """POST /api/search, /api/sync and /api/locate: a file, a video span or a vector in, JSON out."""

    @app.post("/api/search", openapi_extra=BODY_DOC, summary="Search with a file, a video span or a vector")
    async def api_search(
        request: Request,
        k: int = Query(10, ge=1, le=MAX_K, description="Hits to return."),
        side: Side = Query(None, description="The query's side (audio or visual; default: audio when it has sound); the other modality is searched."),
        rerank: Optional[int] = Query(None, ge=0, le=MAX_K, description="Rescore the top N hits with the heads' exact clip score (needs the cache). "
                                      "Default: 50 for a file or span query when the cache is there, else 0 (a vector has no tokens to rerank with)."),
        one_per_video: bool = Query(True, description="Keep only each video's best window."),
        exclude_video: Optional[str] = Query(None, description="Leave this video's windows out (e.g. the query's own)."),
        where: List[str] = Query([], description="COLUMN=VALUE metadata conditions, all required (repeat the parameter)."),
    ):
        from avfeat.index.vector_search import parse_where

        if exclude_video is not None:
            exclude_video = service.video(exclude_video).video_id
        service.searcher.matching_rows("audio", parse_where(where))  # a bad condition is refused before any upload is read
        return await run_query(service, request, True, None, run=lambda query: batched_search(
            service, str(query) if isinstance(query, Path) else query, side, k, rerank, one_per_video, exclude_video, where))

    @app.post("/api/sync", openapi_extra=BODY_DOC, summary="Audio-visual offset of a video (positive: audio late)")
    async def api_sync(request: Request, max_offset: float = Query(2.0, gt=0, le=30, description="Largest offset searched, seconds either way.")):
        if content_type(request) == "application/json":  # an indexed video: its cached tokens
            body = await read_body(request)
            if body.video_id is None:
                raise QueryError("give video_id, or upload a video")
            if body.start is not None or body.end is not None or body.vector is not None:
                # as `avfeat sync`: a whole video's offset, never a span's (nor a vector's)
                raise QueryError("sync takes a whole video: give video_id alone (no start, end or vector)")
            return await locked(service, service.sync, body.video_id, max_offset)
        return await run_query(service, request, False, lambda query: service.sync(query, max_offset))

    @app.post("/api/locate", openapi_extra=BODY_DOC, summary="The video and time a clip was cut from")
    async def api_locate(
        request: Request,
        k: int = Query(5, ge=1, le=100, description="Candidates to return."),
        side: Side = Query(None, description="Vote with one side only (default: both)."),
    ):
        return await run_query(service, request, False, lambda query: service.locate(str(query), side, k))


def add_video_routes(app: FastAPI, service: Service) -> None:
    """GET the indexed videos: the list, one video's metadata, attention maps and the files."""

    @app.get("/api/videos", summary="The indexed videos, in id order")
    def api_videos(offset: int = Query(0, ge=0), limit: int = Query(1000, ge=1, le=10000), prefix: str = Query("", description="Only ids starting with this.")):
        ids = [v for v in service.videos if v.startswith(prefix)]
        return {"total": len(ids), "videos": [service.videos[v].public() for v in ids[offset : offset + limit]]}

    @app.get("/api/videos/{video_id}", summary="One video's span, window count and metadata")
    def api_video(video_id: str):
        video = service.video(video_id)
        info = video.public()
        try:
            record = service.cached().record(video.video_id)
            info.update(duration=record.duration, fps=record.fps, width=record.width, height=record.height, status=record.status)
        except CacheError:
            pass  # the cache is gone: what the index table holds is still worth showing
        info["media"] = media_url(video.video_id) if is_local_file(video.path) else None
        return info

    @app.get("/api/attention/{video_id}", summary="PNG: where the sound of [time, time + window) is in the frame at time",
                response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def api_attention(
        video_id: str,
        time_s: float = Query(..., alias="time", ge=0, description="Start of the audio window, seconds on the video's timeline."),
        frame: Optional[float] = Query(None, ge=0, description="Time of the frame drawn (default: time), e.g. the middle of a hit."),
    ):
        return Response(await locked(service, service.attention_png, video_id, time_s, frame), media_type="image/png")

    @app.get("/media/{video_id}", summary="The video's file (HTTP Range supported); play a hit with /media/ID#t=START,END")
    def media(video_id: str):
        path = service.media_file(video_id)  # by id from the index table: never a path from the request
        return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")

    app.head("/media/{video_id}", include_in_schema=False)(media)


def add_state_routes(app: FastAPI, service: Service, metrics: Metrics) -> None:
    """GET /health (liveness, no token needed) and /metrics (Prometheus text).

    Both are ``async def`` and do no blocking work (they read counters and loaded fields), so
    they run on the event loop: never behind model requests that hold every worker thread
    while they wait for ``Service.lock``."""

    @app.get("/health")
    async def health():
        return service.health()

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)


def add_page(app: FastAPI, token: Optional[str]) -> None:
    """The page at ``/`` and its assets under ``/static`` (every asset served from here, no CDN).
    ``/?token=TOKEN`` sets the token as a cookie that the page's fetches and videos then carry."""

    @app.get("/", include_in_schema=False)
    def page(request: Request):
        given = request.query_params.get("token")
        if token is not None and given:
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict")
            return response
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        # Browsers ask for it whatever the page declares: an answer, not a 404 in the log.
        return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
