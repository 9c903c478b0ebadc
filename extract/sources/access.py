"""Reading an input whatever its kind of path: its size and mtime, whether it exists, a seekable
file of its bytes, its whole bytes, and a byte-by-byte comparison of two inputs."""

from __future__ import annotations

import filecmp
import os

from avfeat.extract.sources.files import BLOCK_SIZE, HEADER_BLOCK, Slice, open_local, open_whole
from avfeat.extract.sources.paths import is_plain_local, is_remote, split_member
from avfeat.extract.sources.remote import Stat, filesystem, remote_errors, stat_from_info
from avfeat.extract.sources.tars import tar_index

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
        with remote_errors(f"cannot read {path}"):
            info = fs.info(key)
        if info.get("type", "file") != "file":
            raise IsADirectoryError(f"{path} is a folder")
        return stat_from_info(info)
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
        return Slice(open_whole(member[0], readahead, block), found.offset, found.size, os.fspath(path))
    if is_remote(path):
        return open_whole(path, readahead)
    return open_local(path)


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
