"""The ASGI app of `avfeat serve` around a loaded ``Service``: FastAPI with the route groups,
one-line error answers, the page, and the ``Guard`` outside them all."""

from __future__ import annotations

from typing import Iterable

from fastapi import FastAPI

from avfeat.core.values import parse_size
from avfeat.index.serve.access import DEFAULT_MAX_UPLOAD
from avfeat.index.serve.batching import DEFAULT_WINDOW
from avfeat.index.serve.errors import add_error_handlers
from avfeat.index.serve.guard import Guard
from avfeat.index.serve.metrics import Metrics
from avfeat.index.serve.routes import add_page, add_query_routes, add_state_routes, add_video_routes
from avfeat.index.serve.service import Service


def create_app(service: Service, max_upload: int | str = DEFAULT_MAX_UPLOAD, token: str | None = None, hosts: Iterable[str] | None = None,
               batch_window: float = DEFAULT_WINDOW) -> Guard:
    """The ASGI app around a loaded ``Service``.

    ``max_upload``: the largest request body accepted (bytes, or a size such as ``200MB``).
    ``token``: when set, every request but ``/health`` and the page's static assets must carry
    it (``Authorization: Bearer TOKEN``, the cookie that ``/?token=TOKEN`` sets, or ``?token=``).
    ``hosts``: the names a request's Host header may give (None: any). A loopback server
    answers only to loopback names, so a web page cannot reach it by pointing a name of its own
    at 127.0.0.1 (DNS rebinding). ``batch_window``: seconds a search vector waits for others to
    share its FAISS search (``batching``). Whatever ``hosts``, a request whose Origin header names
    another site than its Host is refused: a page elsewhere cannot post to the service.
    """
    limit = parse_size(max_upload)
    metrics = Metrics(service.counts, len(service.videos), service.started)
    app = FastAPI(
        title="avfeat",
        description="Cross-modal search, sync and locate over an avfeat index.",
        # No /docs or /redoc: FastAPI's pages load Swagger UI and ReDoc from a CDN, which an
        # offline machine cannot reach. The schema stays at /openapi.json.
        docs_url=None, redoc_url=None,
    )
    service.batch_window = batch_window
    app.state.service = service
    app.state.metrics = metrics
    add_error_handlers(app, metrics)
    add_query_routes(app, service)
    add_video_routes(app, service)
    add_state_routes(app, service, metrics)
    add_page(app, token)
    return Guard(app, metrics, limit, token, hosts)
