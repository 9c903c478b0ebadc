"""Each input's video id (README "Video ids"), checked against what the cache already records:
duplicates, id collisions, changed files and the ids to extract again."""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from pathlib import Path

from avfeat.core.errors import InputError
from avfeat.data.records import Status
from avfeat.extract import sources
from avfeat.extract.inputs.items import UNSAFE_ID_CHARS, MediaInput

_SAMPLE_BYTES = 256 * 1024  # hashed from each end of a file: headers and index tables differ per encode
_WHOLE_BYTES = 4 * 2**20  # a file up to this size is hashed whole
_MIDDLE_BLOCKS = 8  # blocks hashed from the middle of a larger file, spread evenly between its ends,
_MIDDLE_BYTES = 64 * 1024  # so a file with the same size and ends but other content gets another key


MAX_ID_LENGTH = 256  # characters of an id given by a table, a shard's key or a layout
_BAD_ID = re.compile(r"[\s@/\\]|^\.{0,2}$")  # '@' starts a time range in `ID@START-END` queries


def _hidden(text: str) -> bool:
    """Control, format (bidi overrides and marks, zero-width) or unassigned characters: they
    make an id or a file name print as something else than it is."""
    return any(unicodedata.category(char)[0] == "C" for char in text)


def check_id(vid: str, where: str) -> None:
    """The one rule for an id an input gives (a table's ``id``, a shard's key, a layout's row).

    Raises:
        InputError: one line naming ``where``: the id is empty, has a space, '@', '/', '\\',
            a control or bidi character, or is over ``MAX_ID_LENGTH`` characters.
    """
    if _BAD_ID.search(vid) or _hidden(vid):
        raise InputError(f"{where}: id {vid!r} is empty or has a space, '@', '/', '\\' or a control or bidi character (ids appear in ID@START-END queries)")
    if len(vid) > MAX_ID_LENGTH:
        raise InputError(f"{where}: id {vid[:40]!r}... has {len(vid)} characters, more than {MAX_ID_LENGTH}")


def check_name(path: str | Path) -> None:
    """Refuse a file whose name holds control or bidi characters (a U+202E in a name
    reverses what follows it on screen): its id is derived from that name.

    Raises:
        InputError: one line naming the file, its characters escaped.
    """
    if _hidden(sources.name(path)):
        raise InputError(f"file name {str(path)!r} has control or bidi characters; rename the file or give it an id in an input table")


def _stem(path: str | Path) -> str:
    return UNSAFE_ID_CHARS.sub("_", Path(sources.name(path)).stem).strip("_") or "video"


def _sampled_ranges(size: int) -> list[tuple[int, int]]:
    """The ``(offset, length)`` ranges of a file of ``size`` bytes its content key hashes."""
    if size <= _WHOLE_BYTES:
        return [(0, size)]
    head = min(_SAMPLE_BYTES, size)
    tail = max(head, size - _SAMPLE_BYTES)
    ranges = [(0, head)]
    span = tail - head  # the middle, between the ends
    for block in range(_MIDDLE_BLOCKS if span > 0 else 0):
        start = head + span * (2 * block + 1) // (2 * _MIDDLE_BLOCKS) - _MIDDLE_BYTES // 2  # centred
        start = min(max(head, start), max(head, tail - _MIDDLE_BYTES))
        ranges.append((start, min(_MIDDLE_BYTES, tail - start)))
    ranges.append((tail, size - tail))
    return [(start, length) for start, length in ranges if length > 0]


def content_key(path: str | Path) -> str:
    """64 bits of a hash of a file's size and bytes: all of them up to 4 MiB, else its first and
    last 256 KiB and 8 blocks of 64 KiB spread evenly between them (raises OSError).

    A URL or tar member is read in range requests, one per range, so it gets its local copy's key."""
    digest = hashlib.blake2b(digest_size=8)
    with sources.open_bytes(path, readahead=False) as handle:
        size = handle.seek(0, os.SEEK_END)
        digest.update(size.to_bytes(8, "little"))
        for start, length in _sampled_ranges(size):
            handle.seek(start)
            digest.update(handle.read(length))
    return digest.hexdigest()


def video_id(path: str | Path) -> str:
    """The default id of a file: its stem and its content key; from the absolute path when the
    file cannot be read. The character set leaves '@' free for `VIDEO_ID@START-END` queries."""
    try:
        key = content_key(path)
    except OSError:
        key = hashlib.blake2b(sources.resolve(path).encode(), digest_size=8).hexdigest()
    return f"{_stem(path)}-{key}"


@dataclass
class IdPlan:
    """Each input's id, and what deciding them found."""

    ids: list[tuple[MediaInput, str]] = field(default_factory=list)  # inputs to consider, in order
    paths: list[str] = field(default_factory=list)  # each of those inputs' path as the manifest records it (resolve_paths)
    duplicates: list[tuple[str | Path, str | Path]] = field(default_factory=list)  # (input, the earlier one with the same bytes)
    collisions: list[tuple[str | Path, str | Path, str]] = field(default_factory=list)  # (input, the other file, the id both get)
    changed: list[tuple[str | Path, str]] = field(default_factory=list)  # (input, the id its old tokens have)
    superseded: dict[str, str] = field(default_factory=dict)  # new id → the recorded id of the same file before it changed
    again: set[str] = field(default_factory=set)  # ids to extract even though the cache records them


def _same_bytes(a: str | Path, b: str | Path) -> bool:
    try:
        return sources.same_bytes(a, b)
    except OSError:
        return False


# Statuses of an input that could not be read at all (listing and opening, before decoding).
_READ_FAILURES = frozenset({Status.UNREADABLE, Status.MISSING, Status.REMOTE_TIMEOUT, Status.ACCESS_DENIED})


def _never_read(record) -> bool:
    """Whether a record failed before its file could be read: it holds no size or mtime to
    compare (an outage, a refused URL), so a file that reads now has not "changed"."""
    return record.status in _READ_FAILURES and record.size == 0 and record.mtime == 0


def _other_file(known, resolved: str, item: MediaInput, stat) -> bool:
    """Whether the cache's record of an input's id is of another file. Another path may hold the
    id after a dataset was moved or copied (same bytes): when the recorded file is still there,
    the bytes themselves are compared. A table's id is checked the same way, so an id it gives
    to another file is a collision, not a video "already in the cache"."""
    if known.path == resolved:
        return False
    return known.size != stat.size or (sources.exists(known.path) and not _same_bytes(known.path, item.path))


def _by_path(recorded: dict) -> tuple[dict, dict]:
    """The records of whole files by path, and those of segments by ``(path, start, end)``:
    a plain string key is the cheaper lookup for the million inputs of a resume."""
    records = list(recorded.values())
    starts, ends = map(attrgetter("segment_start"), records), map(attrgetter("segment_end"), records)
    if not set(chain(starts, ends)) - {None}:  # no segments: one dict, built in C
        return dict(zip(map(attrgetter("path"), records), records)), {}
    whole, segments = {}, {}
    for record in records:
        if record.segment_start is None and record.segment_end is None:
            whole[record.path] = record
        else:
            segments[(record.path, record.segment_start, record.segment_end)] = record
    return whole, segments


def resolve_paths(inputs: list[MediaInput]) -> list[str]:
    """Each input's path as the manifest records it (``sources.resolve``), each folder once."""
    resolve = sources.resolver()
    return [resolve(item.path, item.link) for item in inputs]


def assign_ids(inputs: list[MediaInput], recorded: dict, refresh: bool = False, retry_failed: bool = False,
               resolved: list[str] | None = None) -> IdPlan:
    """Give every input its id (see the module docstring), checked against the cache's records
    (``{video_id: VideoRecord}``). ``refresh`` and ``retry_failed`` say which changed files
    may be extracted again (see `avfeat extract --help`).

    A record of the same path with the same size and mtime gives its id without reading the
    file, so resuming a large job reads nothing twice. ``resolved``: the inputs' paths from
    ``resolve_paths`` when the caller has them already.
    """
    whole, segments = _by_path(recorded)
    plan = IdPlan()
    owner: dict[str, str | Path] = {}  # id → the input of this run that has it
    find, take, took_path = whole.get, plan.ids.append, plan.paths.append  # bound once: a million inputs
    for item, resolved in zip(inputs, resolve_paths(inputs) if resolved is None else resolved, strict=True):
        start, end = item.start, item.end
        previous = find(resolved) if start is None and end is None else segments.get((resolved, start, end))
        try:
            stat = item.stat or sources.stat(item.path)
        except OSError:
            stat = None
        if (previous is not None and stat is not None and stat[0] == previous.size and stat[1] == previous.mtime
                and (item.user_id is None or item.user_id == previous.video_id) and previous.video_id not in owner):
            # The common case of a resume: the recorded file, unchanged, under its recorded id
            # (the checks below would decide the same).
            owner[previous.video_id] = item.path
            take((item, previous.video_id))
            took_path(resolved)
            continue
        _decide(plan, owner, item, resolved, previous, stat, recorded, refresh, retry_failed)
    return plan


def _decide(plan: IdPlan, owner: dict, item: MediaInput, resolved: str, previous, stat, recorded: dict, refresh: bool, retry_failed: bool) -> None:
    """One input's id (in ``plan`` and ``owner``), or why it gets none: ``previous`` is the
    record of its path (None: none), ``stat`` its size and mtime (None: unreadable)."""
    if previous is not None and stat is not None and _never_read(previous) and previous.status != Status.MISSING and not retry_failed:
        stat = None  # it failed before it could be read: not a changed file, a failed one (--retry-failed)
    if item.user_id is not None:
        vid = item.user_id
    elif previous is not None and (stat is None or (previous.size, previous.mtime) == stat):
        vid = previous.video_id
    else:
        vid = video_id(item.path) + item.segment_suffix()
    if previous is not None and stat is not None and (previous.size, previous.mtime) != stat:
        # Cached tokens are replaced only with --refresh; a failed record also with
        # --retry-failed; a missing file that is back is simply extracted.
        allowed = refresh or previous.status == Status.MISSING or (retry_failed and previous.status != "ok")
        if not allowed:
            plan.changed.append((item.path, previous.video_id))
            return
        plan.again.add(vid)  # a changed file with --refresh, or a missing one that is back
        if previous.video_id != vid:
            plan.superseded[vid] = previous.video_id
    if vid in owner:
        if item.user_id is None and _same_bytes(owner[vid], item.path):
            plan.duplicates.append((item.path, owner[vid]))
        else:
            plan.collisions.append((item.path, owner[vid], vid))
        return
    known = recorded.get(vid)
    if known is not None and stat is not None and _other_file(known, resolved, item, stat):
        plan.collisions.append((item.path, known.path if sources.is_remote(known.path) else Path(known.path), vid))
        return
    owner[vid] = item.path
    plan.ids.append((item, vid))
    plan.paths.append(resolved)
