"""Remote inputs through fsspec: per-request timeouts, filesystems, listings, and the rule that
turns any library's failed read into an ``OSError`` subclass and a manifest status.

Credentials come from fsspec's and the cloud SDKs' own mechanisms (environment variables such as
``AWS_ACCESS_KEY_ID``/``AWS_ENDPOINT_URL``, their config files, instance roles); avfeat keeps none
of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import NamedTuple

from avfeat.core.errors import InputError
from avfeat.core.values import seconds_from_env
from avfeat.data.records import Status
from avfeat.extract.sources.paths import URL_SCHEME, is_remote, protocol

# Seconds one network request may wait (to connect, and between bytes of an answer) before it
# fails as `remote_timeout`. A whole file's decode is also bounded by `avfeat extract --timeout`.
TIMEOUT_ENV = "AVFEAT_REMOTE_TIMEOUT"
DEFAULT_TIMEOUT = 60.0


class Stat(NamedTuple):
    """What the changed-file rule compares: size in bytes and a modification time (seconds;
    for remote objects their Last-Modified, else a number derived from their ETag, else 0)."""

    size: int
    mtime: float


def remote_timeout() -> float:
    return seconds_from_env(TIMEOUT_ENV, DEFAULT_TIMEOUT)


def _storage_options(scheme: str) -> dict:
    """avfeat's per-request timeouts, under whatever the user set in fsspec's own configuration
    (``FSSPEC_S3_*`` variables, ``~/.config/fsspec``), which wins key by key."""
    import fsspec.config

    user = fsspec.config.conf.get(scheme, {})
    seconds = remote_timeout()
    if scheme in ("http", "https"):
        import aiohttp

        # sock_read: the longest wait for the next bytes, so a stalled server fails fast
        # while a large answer that keeps flowing is never cut.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
        return {"client_kwargs": {"timeout": timeout, **user.get("client_kwargs", {})}}
    if scheme in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": seconds, "read_timeout": seconds, **user.get("config_kwargs", {})}}
    return {}


def filesystem(url: str):
    """The fsspec filesystem for ``url`` and the path it knows the object by."""
    import fsspec

    scheme = protocol(url)
    try:
        return fsspec.core.url_to_fs(url, **_storage_options(scheme))
    except ImportError as error:
        raise ImportError(
            f"reading {scheme}:// URLs needs fsspec's {scheme} support ({' '.join(str(error).split())}); "
            "install avfeat[remote] (s3:// and http(s)://) or the fsspec package for that protocol"
        ) from None


def check_protocol(url: str) -> None:
    """Raise InputError (one line) when ``url``'s protocol cannot be read here, before any
    input is read rather than at the first one."""
    if is_remote(url):
        try:
            filesystem(url)
        except ImportError as error:
            raise InputError(str(error)) from None
        except ValueError as error:  # fsspec: "Protocol not known"
            raise InputError(f"cannot read {url}: {' '.join(str(error).split())}") from None


def _url(fs, name: str) -> str:
    return name if URL_SCHEME.match(name) else fs.unstrip_protocol(name)


def stat_from_info(info: dict) -> Stat:
    """Size and an mtime-like number from an fsspec info dict (S3 LastModified, GCS updated,
    HTTP Last-Modified, else the ETag)."""
    size = int(info.get("size") or 0)
    for key in ("mtime", "LastModified", "last_modified", "updated", "Last-Modified", "modified"):
        value = info.get(key)
        if value is None:
            continue
        with contextlib.suppress(TypeError, ValueError):
            if isinstance(value, str):
                value = parsedate_to_datetime(value) if key == "Last-Modified" else datetime.fromisoformat(value)
            seconds = value.timestamp() if isinstance(value, datetime) else float(value)
            # Whole seconds: stores keep no finer times, and some list finer than they stat.
            return Stat(size, float(int(seconds)))
    etag = info.get("ETag") or info.get("etag")
    # 48 bits of the ETag's hash: a float holds them exactly, and another ETag gives another number.
    mtime = float(int.from_bytes(hashlib.blake2b(str(etag).encode(), digest_size=6).digest(), "big")) if etag else 0.0
    return Stat(size, mtime)


@contextlib.contextmanager
def remote_errors(what: str):
    """Re-raise any error of a remote read as the OSError subclass that says what it was."""
    try:
        yield
    except Exception as error:  # aiohttp, botocore and fsspec each raise their own types
        raise as_os_error(error, what) from error


def as_os_error(error: BaseException, what: str) -> OSError:
    kind = {Status.MISSING: FileNotFoundError, Status.ACCESS_DENIED: PermissionError, Status.REMOTE_TIMEOUT: TimeoutError}.get(status_of(error), OSError)
    return kind(f"{what}: {describe(error)}")


def list_files(url: str, pattern: bool) -> list[tuple[str, Stat | None]]:
    """The files under a remote folder (recursively) or matching a remote glob, as
    ``(url, stat or None when the listing does not say)``, sorted by URL."""
    fs, path = filesystem(url)
    with remote_errors(f"cannot list {url}"):
        found = fs.glob(path, detail=True) if pattern else fs.find(path, detail=True)
    files = []
    for key, info in found.items():
        if info.get("type", "file") != "file":
            continue
        files.append((_url(fs, key), stat_from_info(info) if info.get("size") is not None else None))
    return sorted(files)


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _http_status(error: BaseException) -> int | None:
    for attribute in ("status", "status_code", "code"):
        value = getattr(error, attribute, None)
        if isinstance(value, int):
            return value
    response = getattr(error, "response", None)  # botocore's ClientError
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return {"AccessDenied": 403, "Forbidden": 403, "NoSuchKey": 404, "NoSuchBucket": 404, "404": 404, "403": 403}.get(str(code))
    return None


def status_of(error: BaseException) -> str:
    """The manifest status a failed read stands for: ``remote_timeout``, ``access_denied``,
    ``missing``, else ``unreadable``. Looks through the error's causes, because fsspec wraps
    what the server said (its HTTP info raises FileNotFoundError for a 403 or a timeout too)."""
    chain = list(_chain(error))
    if any(isinstance(e, TimeoutError) or "timeout" in type(e).__name__.lower() for e in chain):
        return Status.REMOTE_TIMEOUT
    if any(isinstance(e, PermissionError) or _http_status(e) in (401, 403) for e in chain):
        return Status.ACCESS_DENIED
    # Not found only when nothing deeper says otherwise: fsspec's HTTP info raises
    # FileNotFoundError for a refused connection too.
    if isinstance(chain[-1], FileNotFoundError) or any(_http_status(e) in (404, 410) for e in chain):
        return Status.MISSING
    return Status.UNREADABLE


def describe(error: BaseException) -> str:
    """One line for the manifest: what the server or library said, at the bottom of the chain."""
    status = status_of(error)
    if status == Status.REMOTE_TIMEOUT:
        return f"no answer within {remote_timeout():g} s ({TIMEOUT_ENV})"
    root = list(_chain(error))[-1]
    text = " ".join(str(getattr(root, "strerror", None) or root or type(root).__name__).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    label = {Status.MISSING: "not found", Status.ACCESS_DENIED: "access denied"}.get(status)
    if label is None:
        return text
    return f"{label} ({text})" if " " in text else label  # s3fs says only the key, which the caller names
