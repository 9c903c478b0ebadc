"""`avfeat serve INDEX`: the warm search service (JSON API, metrics, web page)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from avfeat.cli.options import device_option, quiet_option

DEFAULT_MAX_UPLOAD = "200MB"  # avfeat.index.serve.access.DEFAULT_MAX_UPLOAD, here so `avfeat --help` imports nothing


def serve(
    index_dir: Path = typer.Argument(..., metavar="INDEX", help="An index folder written by `avfeat index`."),
    cache: Optional[Path] = typer.Option(None, help="Cache folder (default: the one the index records; another cache is refused)."),
    heads: Optional[Path] = typer.Option(None, help="Heads checkpoint (default: the one the index was built with; others are refused)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; another than loopback needs --token."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    device: str = device_option("backbones embed uploads"),
    max_upload: str = typer.Option(DEFAULT_MAX_UPLOAD, help="Largest request body accepted (e.g. 200MB, 1GB); larger ones get 413."),
    token: Optional[str] = typer.Option(None, envvar="AVFEAT_SERVE_TOKEN", help="Require this token on every request but /health (header, cookie or ?token=); needed to listen beyond loopback."),
    allow_host: List[str] = typer.Option([], "--allow-host", help="Another name the server answers to in the Host header (repeatable); on loopback only localhost, 127.0.0.1 and ::1 are answered."),
    quiet: bool = quiet_option("No access log."),
    workers: int = typer.Option(1, min=1, max=64, help="Processes that each load the service and answer on the one port (metrics are per process)."),
    batch_ms: float = typer.Option(2.0, min=0, max=1000, help="Milliseconds a search vector waits for concurrent ones to share one FAISS search."),
) -> None:
    """A warm search service: JSON API, metrics and a web page at / (needs the serve extra)."""
    from avfeat.index.serve.run import run_server

    run_server(index_dir, cache=cache, heads=heads, host=host, port=port, device=device, max_upload=max_upload, token=token,
               allow_host=allow_host, quiet=quiet, workers=workers, batch_ms=batch_ms, say=lambda line: typer.echo(line, err=True))


def register(app: typer.Typer) -> None:
    app.command()(serve)
