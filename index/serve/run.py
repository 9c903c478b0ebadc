"""`avfeat serve`'s library call: load the service for an index and answer with uvicorn until
stopped. FastAPI and uvicorn are an optional extra (``pip install 'avfeat[serve]'``), imported
only here, when the service starts."""

from __future__ import annotations

import copy
import errno
import socket
from pathlib import Path
from typing import Callable, Iterable, Optional

from avfeat.core.errors import InputError
from avfeat.index.serve.access import DEFAULT_MAX_UPLOAD, is_loopback, served_hosts


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
    workers: int = 1,
    batch_ms: float = 2.0,
) -> None:
    """`avfeat serve`: load the service for ``index_dir`` and answer on ``host:port`` until
    stopped. ``say`` gets the lines for the console (a note on what is off, where it listens)
    before the server starts; ``quiet`` drops the access log. ``workers`` > 1 forks that many
    processes that each load the service and accept on the one socket (``workers.run_workers``). ``batch_ms``: how long a search vector waits for
    others to share its FAISS search.

    Raises:
        InputError: FastAPI or uvicorn is missing, ``host`` is beyond loopback without ``token``,
            or ``port`` is in use (found before the index and models load), or ``workers`` < 1.
    """
    from avfeat.core.devices import resolve_device
    from avfeat.core.values import parse_size

    say = say or (lambda line: None)
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError:
        raise InputError("avfeat serve needs FastAPI, uvicorn and prometheus_client: pip install 'avfeat[serve]'") from None
    if not is_loopback(host) and not token:
        raise InputError(f"--host {host} lets other machines in: give --token (or AVFEAT_SERVE_TOKEN), or listen on 127.0.0.1")
    from avfeat.index.serve.app import create_app
    from avfeat.index.serve.service import Service

    limit = parse_size(max_upload)
    if workers < 1:
        raise InputError(f"--workers must be 1 or more, not {workers}")
    if not 0 <= batch_ms <= 1000:
        raise InputError(f"--batch-ms must be between 0 and 1000, not {batch_ms:g}")
    hosts = served_hosts(host, allow_host)

    def load():
        """The uvicorn server around a loaded service, and the lines for the console."""
        service = Service(index_dir, heads=heads, cache=cache, device=str(resolve_device(device)))
        lines = [f"note: {service.cache_problem}; VIDEO_ID queries, rerank, locate and attention maps are off"] if service.cache_problem else []
        app = create_app(service, max_upload=limit, token=token, hosts=hosts, batch_window=batch_ms / 1000)
        shown = "localhost" if host in ("127.0.0.1", "::1") else host
        many = f", {workers} workers" if workers > 1 else ""
        lines.append(f"avfeat serve: {index_dir} ({len(service.videos)} videos{many}) on http://{shown}:{port}/ (API schema: /openapi.json)")
        config = uvicorn.Config(app, host=host, port=port, log_level="warning" if quiet else "info", access_log=not quiet, log_config=log_config())
        return uvicorn.Server(config), lines

    listening = listen_socket(host, port)  # a port in use fails now, not after minutes of loading
    try:
        if workers > 1:
            from avfeat.index.serve.workers import run_workers

            return run_workers(load, listening, workers, say)
        server, lines = load()
        for line in lines:
            say(line)
        server.run(sockets=[listening])
    finally:
        listening.close()


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (uvicorn listens on it), before anything loads.

    Raises:
        InputError: the port is in use, or the address cannot be listened on.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise InputError(f"cannot listen on {host}: {error.strerror or error}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free
        sock.bind(address)
        sock.listen(2048)  # as uvicorn's backlog; a second server on the port is refused from now on
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise InputError(f"port {port} on {host} is in use") from None
        raise InputError(f"cannot listen on port {port} on {host}: {error.strerror or error}") from None
    return sock


def log_config() -> dict:
    """uvicorn's logging setup with ``RedactTokens`` on every handler: no log line shows a token."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact"] = {"()": "avfeat.index.serve.access.RedactTokens"}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact")
    return config
