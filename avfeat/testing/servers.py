"""Remote inputs for tests and benchmarks: a local HTTP server with Range requests, a local S3,
WebDataset shards. Everything binds to 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import http.server
import os
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit


class LocalHTTP:
    """A running ``serve_http``: its base URL (no trailing slash) and every request it got, as
    ``(method, path, Range header or None)``."""

    def __init__(self, url: str = ""):
        self.url = url
        self.requests: list[tuple[str, str, str | None]] = []


@dataclass
class _Site:
    """What a ``serve_http`` server serves and how it misbehaves on purpose."""

    root: Path
    state: LocalHTTP
    forbidden: Collection[str] = ()
    stalled: Collection[str] = ()
    stall: float = 60.0
    stop: threading.Event = field(default_factory=threading.Event)

    def forbids(self, path: str) -> bool:
        """Whether ``path`` answers 403."""
        return path in self.forbidden

    def hold(self, path: str, body: bool) -> None:
        """Wait ``stall`` seconds (or until the server stops) before a GET of a stalled path, as a
        server that stops sending; HEAD answers at once."""
        if body and path in self.stalled:
            self.stop.wait(self.stall)


def _byte_range(ranged: str | None, size: int) -> tuple[int, int, int]:
    """``(start, end, status)`` that a Range header asks of a file of ``size`` bytes (``end``
    inclusive): 200 for the whole file (no header), 206 for a part, 400 for a header that is not
    one, 416 for a range outside the file."""
    start, end = 0, size - 1
    if not ranged:
        return start, end, 200
    first, _, last = ranged.removeprefix("bytes=").partition("-")
    try:
        if first:
            start, end = int(first), min(size - 1, int(last)) if last else size - 1
        else:  # bytes=-N: the last N bytes
            start, end = max(0, size - int(last)), size - 1
    except ValueError:
        return start, end, 400
    if start >= size or start > end:
        return start, end, 416
    return start, end, 206


class _Handler(http.server.BaseHTTPRequestHandler):
    """Files under the server's ``site.root``, with Range requests; a folder answers a page of links."""

    protocol_version = "HTTP/1.1"  # keep-alive, as clients expect of a file server

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _empty(self, code: int, **headers) -> None:
        self.send_response(code)
        for key, value in {"Content-Length": "0", **headers}.items():
            self.send_header(key, value)
        self.end_headers()

    def _serve(self, body: bool) -> None:
        site: _Site = self.server.site
        path = unquote(urlsplit(self.path).path)
        site.state.requests.append((self.command, path, self.headers.get("Range")))
        try:
            if site.forbids(path):
                return self._empty(403)
            site.hold(path, body)
            local = (site.root / path.lstrip("/")).resolve()
            if local != site.root and site.root not in local.parents:
                return self._empty(404)
            if local.is_dir():
                return self._listing(local, body)
            if not local.is_file():
                return self._empty(404)
            self._file(local, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def _listing(self, folder: Path, body: bool) -> None:
        links = "".join(f'<a href="{quote(p.name)}{"/" if p.is_dir() else ""}">{p.name}</a>\n' for p in sorted(folder.iterdir()))
        data = f"<html><body>\n{links}</body></html>\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _file(self, local: Path, body: bool) -> None:
        size = local.stat().st_size
        start, end, code = _byte_range(self.headers.get("Range"), size)
        if code == 400:
            return self._empty(400)
        if code == 416:
            return self._empty(416, **{"Content-Range": f"bytes */{size}"})
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", formatdate(local.stat().st_mtime, usegmt=True))
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if body:
            self._send_bytes(local, start, end - start + 1)

    def _send_bytes(self, local: Path, start: int, left: int) -> None:
        with open(local, "rb") as handle:
            handle.seek(start)
            while left > 0:
                chunk = handle.read(min(left, 256 * 1024))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a stalled answer never holds up the end of the test

    def __init__(self, site: _Site):
        self.site = site
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request, client_address):  # a client that hung up: not news
        pass


@contextlib.contextmanager
def serve_http(root, forbidden=(), stalled=(), stall: float = 60.0):
    """Serve the files under ``root`` on 127.0.0.1 over HTTP/1.1 with Range requests (206 and
    Content-Range, as object stores and CDNs answer; Python's http.server has no Range).

    Paths (``/clips/a.mp4``) in ``forbidden`` answer 403; GETs of paths in ``stalled`` wait
    ``stall`` seconds before answering (HEAD answers at once), standing in for a server that
    stops sending. A folder answers an HTML page of links, as an index page does. Yields a
    :class:`LocalHTTP`; the server stops when the block ends.
    """
    site = _Site(Path(root).resolve(), LocalHTTP(""), forbidden, stalled, stall)
    server = _Server(site)
    site.state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="avfeat-test-http", daemon=True)
    thread.start()
    try:
        yield site.state
    finally:
        site.stop.set()
        server.shutdown()
        server.server_close()
        thread.join()


# Credentials for the local S3 of ``serve_s3`` (moto accepts any).
S3_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def serve_s3():
    """A local S3-compatible server (moto's ThreadedMotoServer) on 127.0.0.1; yields its endpoint
    URL. Point boto3 and s3fs at it with ``AWS_ENDPOINT_URL`` and ``S3_TEST_ENV``."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def upload_s3(endpoint: str, bucket: str, files: dict) -> None:
    """Create ``bucket`` on the S3 at ``endpoint`` and put ``{key: local path}`` into it."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in S3_TEST_ENV.items() if k != "AWS_DEFAULT_REGION"},
                          region_name=S3_TEST_ENV["AWS_DEFAULT_REGION"])
    client.create_bucket(Bucket=bucket)
    for key, path in files.items():
        client.upload_file(str(path), bucket, key)


def make_shard(path, samples: dict) -> str:
    """Write a WebDataset shard as video2dataset does: per ``{key: (media file, metadata or
    None)}`` the members ``KEY.<media extension>`` and ``KEY.json``; returns its path."""
    import io
    import json
    import tarfile

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for key, (media, metadata) in samples.items():
            if metadata is not None:
                data = json.dumps(metadata).encode()
                info = tarfile.TarInfo(f"{key}.json")
                info.size, info.mtime = len(data), 1_700_000_000
                tar.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(f"{key}{Path(media).suffix}")
            info.size, info.mtime = os.path.getsize(media), 1_700_000_000  # fixed: the bytes do not depend on when
            with open(media, "rb") as handle:
                tar.addfile(info, handle)
    return os.fspath(path)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve_index(index, *args, wait: float = 120.0):
    """`avfeat serve INDEX ARGS` in a child process on a free loopback port, warm (its /health
    answered); yields its URL and stops it when the block ends."""
    import json
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    command = [sys.executable, "-m", "avfeat", "serve", str(index), "--port", str(port), "--device", "cpu", "--quiet", *map(str, args)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"avfeat serve exited {process.returncode}: {process.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                    if json.loads(answer.read()).get("status") in ("ok", "ready", None):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"avfeat serve did not answer within {wait:g} s")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
