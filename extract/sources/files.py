"""Seekable binary files over an input's bytes: a local regular file, a remote object read in
range requests, and a window of either (``Slice``: a tar member, or a whole remote object)."""

from __future__ import annotations

import contextlib
import io
import os
from stat import S_ISREG

from avfeat.extract.sources.paths import is_remote
from avfeat.extract.sources.remote import as_os_error, filesystem, remote_errors

# Bytes fetched per range request while decoding: large enough that a decode is a handful of
# requests per file, small enough that a member of a large remote tar does not pull its neighbours.
BLOCK_SIZE = 4 * 2**20
# Bytes fetched per request while reading a tar's headers: one header and a sample's small
# members (.json, .txt) usually share one request; the media between headers is skipped.
HEADER_BLOCK = 64 * 1024


def open_local(path: str | os.PathLike):
    """A local regular file, opened for reading. A FIFO, socket or device is refused with an
    OSError: opening a FIFO would wait for a writer forever."""
    if not S_ISREG(os.stat(path).st_mode):
        raise OSError(f"{os.fspath(path)} is not a regular file (a FIFO, socket or device)")
    return open(path, "rb")


def open_whole(path: str | os.PathLike, readahead: bool, block_size: int = BLOCK_SIZE):
    if not is_remote(path):
        return open_local(path)
    fs, key = filesystem(os.fspath(path))
    with remote_errors(f"cannot read {path}"):
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
