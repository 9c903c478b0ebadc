"""Uncompressed tar files (WebDataset shards): their regular members, where each member's bytes
lie, and the bytes of the small members a listing keeps; the index of a tar is read once per
process and a member is then read as a window over the tar's bytes (``files.Slice``)."""

from __future__ import annotations

import os
import tarfile
from collections import OrderedDict
from typing import NamedTuple

from avfeat.extract.sources.files import HEADER_BLOCK, open_whole
from avfeat.extract.sources.paths import resolve
from avfeat.extract.sources.remote import describe

# A tar ends with two zero blocks (POSIX). Python's tarfile stops silently where the data ends
# at a header, so a shard cut there (by a failed upload or copy) would read as complete.
END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE


class TruncatedTar(tarfile.ReadError):
    """A tar whose members end without the end-of-archive marker: it was cut short."""


class Member(NamedTuple):
    """A regular file inside a tar: where its bytes lie and its header's mtime."""

    name: str
    offset: int
    size: int
    mtime: float


# Tar indexes this process has read, most recent last: a decode worker reads a shard's headers
# once for all its members. Bounded, as a worker of a long job meets thousands of shards.
_INDEXES: OrderedDict[str, dict[str, Member]] = OrderedDict()
_INDEXES_KEPT = 16


def scan_tar(tar: str | os.PathLike, keep=lambda name: False) -> tuple[list[Member], dict[str, bytes]]:
    """Every regular member of a tar (in order) and the bytes of those ``keep(name)`` selects,
    reading only headers and the kept members (raises OSError; ``tarfile.ReadError`` for a file
    that is not a tar; ``TruncatedTar`` for one without its end-of-archive marker, whose last
    members are lost)."""
    members, kept = [], {}
    with open_whole(tar, readahead=True, block_size=HEADER_BLOCK) as handle:
        with tarfile.open(fileobj=handle, mode="r:") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                members.append(Member(info.name, info.offset_data, info.size, float(info.mtime)))
                if keep(info.name):
                    kept[info.name] = archive.extractfile(info).read()
            _check_end(handle, archive.offset, tar, len(members))
    _remember(resolve(tar), {m.name: m for m in members})
    return members, kept


def _check_end(handle, offset: int, tar, count: int) -> None:
    """Raise TruncatedTar unless the two zero blocks of the end-of-archive marker lie at
    ``offset``, where tarfile stopped reading headers."""
    handle.seek(offset)
    if handle.read(END_OF_ARCHIVE) != bytes(END_OF_ARCHIVE):
        raise TruncatedTar(
            f"{tar} is truncated: it has no tar end-of-archive marker after its {count} files (at byte {offset}), "
            "so members after them were lost (cut while written or copied); write or copy the shard again")


def tar_index(tar: str | os.PathLike) -> dict[str, Member]:
    """``{member name: Member}`` of a tar, read once per process (see ``scan_tar``)."""
    key = resolve(tar)
    if key in _INDEXES:
        _INDEXES.move_to_end(key)
        return _INDEXES[key]
    try:
        scan_tar(tar)
    except TruncatedTar as error:
        raise OSError(str(error)) from None
    except tarfile.TarError as error:
        raise OSError(f"{tar} is not a readable tar file: {describe(error)}") from None
    return _INDEXES[key]


def _remember(key: str, index: dict[str, Member]) -> None:
    _INDEXES[key] = index
    _INDEXES.move_to_end(key)
    while len(_INDEXES) > _INDEXES_KEPT:
        _INDEXES.popitem(last=False)
