"""Where the bytes of an input come from: local files, fsspec URLs and members of tar files.

Every read of an input's bytes goes through this module, so the rest of extract handles three
kinds of path the same way:

- a local path (``Path`` or ``str``): read with the builtin ``open`` and ``os.stat``, exactly as
  before remote inputs existed;
- a URL (``s3://``, ``gs://``, ``http(s)://``, any fsspec protocol): read through fsspec with
  range requests, never copied whole to disk. Credentials come from fsspec's and the cloud SDKs'
  own mechanisms (environment variables such as ``AWS_ACCESS_KEY_ID``/``AWS_ENDPOINT_URL``,
  their config files, instance roles); avfeat keeps none of its own;
- ``<tar path or URL>#<member name>``: one member of an uncompressed tar (a WebDataset shard),
  read as a window over the tar's bytes (tarfile gives its offset and size).

``file://`` URLs are not handled here: inputs.py turns them into the local paths they name.

Errors of every kind of path are raised as ``OSError`` subclasses (``FileNotFoundError``,
``PermissionError``, ``TimeoutError``, else ``OSError``) with the library's own error as the
cause, so callers that already catch ``OSError`` for local files need nothing else;
``status_of`` turns one into the manifest status it stands for.
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import io
import os
import posixpath
import re
import tarfile
from collections import OrderedDict
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path, PurePosixPath
from stat import S_ISREG
from typing import NamedTuple
from urllib.parse import unquote, urljoin, urlsplit

from avfeat.core.errors import InputError
from avfeat.data.records import Status

# Seconds one network request may wait (to connect, and between bytes of an answer) before it
# fails as `remote_timeout`. A whole file's decode is also bounded by `avfeat extract --timeout`.
TIMEOUT_ENV = "AVFEAT_REMOTE_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
# Bytes fetched per range request while decoding: large enough that a decode is a handful of
# requests per file, small enough that a member of a large remote tar does not pull its neighbours.
BLOCK_SIZE = 4 * 2**20
# Bytes fetched per request while reading a tar's headers: one header and a sample's small
# members (.json, .txt) usually share one request; the media between headers is skipped.
HEADER_BLOCK = 64 * 1024

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_MEMBER = re.compile(r"^(.*\.tar)#(.+)$", re.IGNORECASE | re.DOTALL)  # the last `.tar#` splits


class Stat(NamedTuple):
    """What the changed-file rule compares: size in bytes and a modification time (seconds;
    for remote objects their Last-Modified, else a number derived from their ETag, else 0)."""

    size: int
    mtime: float


class Member(NamedTuple):
    """A regular file inside a tar: where its bytes lie and its header's mtime."""

    name: str
    offset: int
    size: int
    mtime: float


# ---- kinds of path ---------------------------------------------------------------------------


def protocol(path: str | os.PathLike) -> str | None:
    """The URL scheme of ``path`` (lower case), or None for a plain path."""
    match = _URL.match(os.fspath(path))
    return match.group(1).lower() if match else None


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` (or, for a tar member, its tar) is read through fsspec."""
    return protocol(path) not in (None, "file")


def split_member(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(tar, member)`` of ``<tar>#<member>``, or None for a path that names no member."""
    match = _MEMBER.match(os.fspath(path))
    return (match.group(1), match.group(2)) if match else None


def is_plain_local(path: str | os.PathLike) -> bool:
    """A local file that is not a tar member: read exactly as before remote inputs existed."""
    return not is_remote(path) and split_member(path) is None


def name(path: str | os.PathLike) -> str:
    """The file name: the member's for a tar member, the URL path's last part for a URL."""
    text = os.fspath(path)
    member = split_member(text)
    if member is not None:
        return PurePosixPath(member[1]).name
    if is_remote(text):
        return unquote(PurePosixPath(urlsplit(text).path).name)
    return Path(text).name


def suffix(path: str | os.PathLike) -> str:
    """The lower-case extension of ``name(path)`` (a URL's query string is not part of it)."""
    return PurePosixPath(name(path)).suffix.lower()


def resolve(path: str | os.PathLike) -> str:
    """The path recorded in the manifest: a local path made absolute, a URL as given, a member
    as ``<resolved tar>#<member>``."""
    member = split_member(path)
    if member is not None:
        return f"{resolve(member[0])}#{member[1]}"
    if is_remote(path):
        return os.fspath(path)
    return str(Path(path).resolve())


def join(base: str, entry: str) -> str:
    """``entry`` relative to the folder URL ``base`` (the URL of a list or table's folder)."""
    if protocol(base) in ("http", "https"):
        return urljoin(base.rstrip("/") + "/", entry)
    scheme, rest = base.split("://", 1)
    return f"{scheme}://{posixpath.normpath(posixpath.join(rest, entry))}"


def parent(url: str) -> str:
    """The folder URL of a file URL (its query string dropped)."""
    parts = urlsplit(url)
    return parts._replace(path=posixpath.dirname(parts.path), query="", fragment="").geturl()


# ---- fsspec ------------------------------------------------------------------------------------


def remote_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise InputError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


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
    return name if _URL.match(name) else fs.unstrip_protocol(name)


def _stat_from_info(info: dict) -> Stat:
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
def _remote_errors(what: str):
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
    with _remote_errors(f"cannot list {url}"):
        found = fs.glob(path, detail=True) if pattern else fs.find(path, detail=True)
    files = []
    for key, info in found.items():
        if info.get("type", "file") != "file":
            continue
        files.append((_url(fs, key), _stat_from_info(info) if info.get("size") is not None else None))
    return sorted(files)


# ---- stat, open, compare -----------------------------------------------------------------------


def stat(path: str | os.PathLike) -> Stat:
    """Size and mtime of a local file, a URL or a tar member (raises OSError)."""
    member = split_member(path)
    if member is not None:
        found = tar_index(member[0]).get(member[1])
        if found is None:
            raise FileNotFoundError(f"{member[0]} has no member {member[1]}")
        return Stat(found.size, found.mtime)
    if is_remote(path):
        fs, key = filesystem(os.fspath(path))
        with _remote_errors(f"cannot read {path}"):
            info = fs.info(key)
        if info.get("type", "file") != "file":
            raise IsADirectoryError(f"{path} is a folder")
        return _stat_from_info(info)
    result = os.stat(path)
    return Stat(result.st_size, result.st_mtime)


def exists(path: str | os.PathLike) -> bool:
    if is_plain_local(path):
        return os.path.exists(path)
    try:
        stat(path)
    except OSError:
        return False
    return True


def open_bytes(path: str | os.PathLike, readahead: bool = True):
    """A seekable binary file of ``path``'s bytes (a local file: the builtin ``open``).

    ``readahead=False`` makes each read of a remote file exactly one range request (for the few
    scattered reads of an id); otherwise reads fetch ``BLOCK_SIZE`` at a time.
    """
    member = split_member(path)
    if member is not None:
        found = tar_index(member[0]).get(member[1])
        if found is None:
            raise FileNotFoundError(f"{member[0]} has no member {member[1]}")
        # Read ahead no further than the member: its neighbours are other videos.
        block = min(BLOCK_SIZE, max(HEADER_BLOCK, found.size))
        return Slice(_open_whole(member[0], readahead, block), found.offset, found.size, os.fspath(path))
    if is_remote(path):
        return _open_whole(path, readahead)
    return open_local(path)


def open_local(path: str | os.PathLike):
    """A local regular file, opened for reading. A FIFO, socket or device is refused with an
    OSError: opening a FIFO would wait for a writer forever."""
    if not S_ISREG(os.stat(path).st_mode):
        raise OSError(f"{os.fspath(path)} is not a regular file (a FIFO, socket or device)")
    return open(path, "rb")


def _open_whole(path: str | os.PathLike, readahead: bool, block_size: int = BLOCK_SIZE):
    if not is_remote(path):
        return open_local(path)
    fs, key = filesystem(os.fspath(path))
    with _remote_errors(f"cannot read {path}"):
        handle = fs.open(key, "rb", block_size=block_size, cache_type="readahead" if readahead else "none")
    if getattr(handle, "size", None) is None:  # fsspec's HTTP stream: no seeking, so no decoding
        handle.close()
        raise OSError(f"cannot read {path}: the server sends no length (Content-Length), so it cannot be read in ranges")
    return Slice(handle, 0, handle.size, os.fspath(path))


class Slice(io.RawIOBase):
    """Bytes ``[offset, offset + size)`` of a seekable binary file, as a seekable file of their
    own (closing it closes the file under it).

    For remote files it also turns the libraries' read errors into OSError subclasses and keeps
    the first one in ``error``: PyAV reads through Python callbacks, so after a failed read the
    container's own error says only "corrupt data" while ``error`` says what happened. Reads
    after a failure return no bytes, so the decoder stops instead of retrying a dead server.
    """

    def __init__(self, raw, offset: int, size: int, path: str):
        super().__init__()
        self.raw, self.offset, self.size, self.path = raw, int(offset), int(size), path
        self.position = 0
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + int(offset))
        return self.position

    def read(self, size: int = -1) -> bytes:
        if self.error is not None:
            return b""
        left = max(0, self.size - self.position)
        size = left if size is None or size < 0 else min(size, left)
        if size == 0:
            return b""
        try:
            self.raw.seek(self.offset + self.position)
            data = self.raw.read(size)
        except Exception as error:  # any library error: see the class docstring
            if not is_remote(self.path):
                self.error = error
                raise
            self.error = as_os_error(error, f"reading {self.path} failed")
            raise self.error from error
        self.position += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self.raw.close()
        super().close()


def same_bytes(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two files hold the same bytes (compared in full; raises OSError)."""
    if is_plain_local(a) and is_plain_local(b):
        return filecmp.cmp(a, b, shallow=False)
    if stat(a).size != stat(b).size:
        return False
    with open_bytes(a) as first, open_bytes(b) as second:
        while True:
            chunk = first.read(2**20)
            if chunk != second.read(2**20):
                return False
            if not chunk:
                return True


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file (for list files and tables given as URLs)."""
    with open_bytes(path) as handle:
        return handle.read()


# ---- tar files ---------------------------------------------------------------------------------

# Tar indexes this process has read, most recent last: a decode worker reads a shard's headers
# once for all its members. Bounded, as a worker of a long job meets thousands of shards.
_INDEXES: OrderedDict[str, dict[str, Member]] = OrderedDict()
_INDEXES_KEPT = 16


def scan_tar(tar: str | os.PathLike, keep=lambda name: False) -> tuple[list[Member], dict[str, bytes]]:
    """Every regular member of a tar (in order) and the bytes of those ``keep(name)`` selects,
    reading only headers and the kept members (raises OSError; ``tarfile.ReadError`` for a file
    that is not a tar)."""
    members, kept = [], {}
    with _open_whole(tar, readahead=True, block_size=HEADER_BLOCK) as handle:
        with tarfile.open(fileobj=handle, mode="r:") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                members.append(Member(info.name, info.offset_data, info.size, float(info.mtime)))
                if keep(info.name):
                    kept[info.name] = archive.extractfile(info).read()
    _remember(resolve(tar), {m.name: m for m in members})
    return members, kept


def tar_index(tar: str | os.PathLike) -> dict[str, Member]:
    """``{member name: Member}`` of a tar, read once per process (see ``scan_tar``)."""
    key = resolve(tar)
    if key in _INDEXES:
        _INDEXES.move_to_end(key)
        return _INDEXES[key]
    try:
        scan_tar(tar)
    except tarfile.TarError as error:
        raise OSError(f"{tar} is not a readable tar file: {describe(error)}") from None
    return _INDEXES[key]


def _remember(key: str, index: dict[str, Member]) -> None:
    _INDEXES[key] = index
    _INDEXES.move_to_end(key)
    while len(_INDEXES) > _INDEXES_KEPT:
        _INDEXES.popitem(last=False)


# ---- what went wrong -----------------------------------------------------------------------------


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
