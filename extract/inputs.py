"""Turning the INPUT argument of `avfeat extract` into media inputs, and giving each its id.

The id rule (README "Video ids"):

- an input table's ``id`` column wins;
- otherwise the id is the file's stem plus 64 bits of a hash of its bytes (its size, first and
  last 256 KiB), so it does not change when the dataset is moved, copied or remounted, and two
  files of one name in different folders get different ids;
- a file that cannot be read has an id from its absolute path (it has no bytes to hash).

Two inputs with one id are never silently merged: identical files (compared byte by byte) are
extracted once and reported as duplicates; different files are reported as an id collision
and not extracted. A file whose size or mtime differs from what the cache recorded for its
path is reported as changed, and extracted again with ``--refresh``.
"""

from __future__ import annotations

import csv
import filecmp
import glob
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from avfeat.errors import InputError

MEDIA_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .wmv .mpg .mpeg .ts .mts .m2ts .3gp .ogv .vob".split()
)
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
TABLE_EXTENSIONS = frozenset({".csv", ".parquet"})
_GLOB_CHARS = re.compile(r"[*?\[]")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_BAD_USER_ID = re.compile(r"[\s@/\\]|^\.{0,2}$")  # '@' starts a time range in `ID@START-END` queries
MISSING = "missing"  # the status of a listed file that does not exist
_SAMPLE_BYTES = 256 * 1024  # hashed from each end of a file: headers and index tables differ per encode


@dataclass(frozen=True)
class MediaInput:
    """One input named by INPUT: a media file and, from an input table, the user's id."""

    path: Path
    user_id: str | None = None


def _stem(path: str | Path) -> str:
    return _UNSAFE_ID_CHARS.sub("_", Path(path).stem).strip("_") or "video"


def content_key(path: str | Path) -> str:
    """64 bits of a hash of a file's size and its first and last 256 KiB (raises OSError)."""
    digest = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        digest.update(size.to_bytes(8, "little"))
        digest.update(handle.read(_SAMPLE_BYTES))
        if size > _SAMPLE_BYTES:
            handle.seek(max(_SAMPLE_BYTES, size - _SAMPLE_BYTES))
            digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def video_id(path: str | Path) -> str:
    """The default id of a file: its stem and its content key; from the absolute path when the
    file cannot be read. The character set leaves '@' free for `VIDEO_ID@START-END` queries."""
    try:
        key = content_key(path)
    except OSError:
        key = hashlib.blake2b(str(Path(path).resolve()).encode(), digest_size=8).hexdigest()
    return f"{_stem(path)}-{key}"


# ---- reading INPUT -------------------------------------------------------------------------


def _from_list_file(path: Path) -> list[MediaInput]:
    entries = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(MediaInput(_relative_to(path.parent, line)))
    return entries


def _table_rows(path: Path) -> tuple[list[str], list[dict]]:
    """(column names, rows) of a CSV (a byte-order mark is allowed) or Parquet input table."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            return [name.strip() for name in reader.fieldnames or []], [{k.strip(): v for k, v in row.items() if k} for row in reader]
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise InputError(f"cannot read {path} as Parquet: {error}") from None
    return table.column_names, table.to_pylist()


def _from_table(path: Path) -> list[MediaInput]:
    columns, rows = _table_rows(path)
    if "path" not in columns:
        raise InputError(f"{path} has no 'path' column (columns: {', '.join(columns)})")
    entries = []
    for number, row in enumerate(rows, start=1):
        value, user_id = row.get("path"), row.get("id") if "id" in columns else None
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise InputError(f"{path} row {number}: 'path' must be text, not {type(value).__name__} ({value!r})")
        if user_id is not None and user_id != "":
            user_id = str(user_id).strip()
            if _BAD_USER_ID.search(user_id):
                raise InputError(f"{path} row {number}: id {user_id!r} is empty or has a space, '@', '/' or '\\' (ids appear in ID@START-END queries)")
        entries.append(MediaInput(_relative_to(path.parent, value), user_id or None))
    seen: dict[str, int] = {}
    for number, entry in enumerate(entries, start=1):
        if entry.user_id is not None and seen.setdefault(entry.user_id, number) != number:
            raise InputError(f"{path}: id {entry.user_id!r} is given to two rows ({entries[seen[entry.user_id] - 1].path} and {entry.path})")
    return entries


def _relative_to(base: Path, entry: str) -> Path:
    candidate = Path(entry).expanduser()
    return candidate if candidate.is_absolute() else base / candidate


def _glob_inside_root(spec: str) -> list[Path]:
    """Files matching a glob pattern whose folders lie inside the pattern's fixed prefix: a
    ``**`` never follows a folder link out of the tree (a file link is taken as given)."""
    parts = Path(spec).expanduser().parts
    fixed = next((i for i, part in enumerate(parts) if _GLOB_CHARS.search(part)), len(parts))
    root = os.path.realpath(Path(*parts[:fixed]) if fixed else Path("."))
    inside = []
    for match in glob.glob(str(Path(spec).expanduser()), recursive=True):
        folder = os.path.realpath(os.path.dirname(match) or ".")
        if os.path.isfile(match) and (folder == root or folder.startswith(root.rstrip(os.sep) + os.sep)):
            inside.append(Path(match))
    return sorted(inside)


def list_inputs(spec: str) -> list[MediaInput]:
    """Media inputs named by INPUT, in a stable order, without duplicate paths.

    INPUT is a folder (searched recursively for media extensions, not following folder
    links), a glob pattern, a text file with one path per line, a CSV or Parquet file with a
    ``path`` column (and optionally an ``id`` column), or one media file. Relative paths in
    list files and tables are taken relative to that file's folder.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        found = [MediaInput(p) for p in sorted(path.rglob("*")) if p.suffix.lower() in MEDIA_EXTENSIONS and p.is_file()]
        where = f"folder {path} (extensions: {' '.join(sorted(MEDIA_EXTENSIONS))})"
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix in LIST_EXTENSIONS:
            found = _from_list_file(path)
        elif suffix in TABLE_EXTENSIONS:
            found = _from_table(path)
        else:
            found = [MediaInput(path)]
        where = str(path)
    elif _GLOB_CHARS.search(spec):
        found = [MediaInput(p) for p in _glob_inside_root(spec)]
        where = f"pattern {spec}"
    else:
        raise InputError(f"input {spec} does not exist")
    unique: dict[tuple[str, str | None], MediaInput] = {}
    for item in found:
        unique.setdefault((str(item.path.resolve()), item.user_id), item)
    if not unique:
        raise InputError(f"no media files found in {where}")
    return list(unique.values())


# ---- ids against what the cache holds ------------------------------------------------------


@dataclass
class IdPlan:
    """Each input's id, and what deciding them found."""

    ids: list[tuple[MediaInput, str]] = field(default_factory=list)  # inputs to consider, in order
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # (input, the earlier one with the same bytes)
    collisions: list[tuple[Path, Path, str]] = field(default_factory=list)  # (input, the other file, the id both get)
    changed: list[tuple[Path, str]] = field(default_factory=list)  # (input, the id its old tokens have)
    superseded: dict[str, str] = field(default_factory=dict)  # new id → the recorded id of the same file before it changed
    again: set[str] = field(default_factory=set)  # ids to extract even though the cache records them


def _same_bytes(a: str | Path, b: str | Path) -> bool:
    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def assign_ids(inputs: list[MediaInput], recorded: dict, refresh: bool = False, retry_failed: bool = False) -> IdPlan:
    """Give every input its id (see the module docstring), checked against the cache's records
    (``{video_id: VideoRecord}``). ``refresh`` and ``retry_failed`` say which changed files
    may be extracted again (see `avfeat extract --help`).

    A record of the same path with the same size and mtime gives its id without reading the
    file, so resuming a large job reads nothing twice.
    """
    by_path = {record.path: record for record in recorded.values()}
    plan = IdPlan()
    owner: dict[str, Path] = {}  # id → the input of this run that has it
    for item in inputs:
        resolved = str(item.path.resolve())
        previous = by_path.get(resolved)
        try:
            stat = os.stat(item.path)
        except OSError:
            stat = None
        if item.user_id is not None:
            vid = item.user_id
        elif previous is not None and (stat is None or (previous.size, previous.mtime) == (stat.st_size, stat.st_mtime)):
            vid = previous.video_id
        else:
            vid = video_id(item.path)
        if previous is not None and stat is not None and (previous.size, previous.mtime) != (stat.st_size, stat.st_mtime):
            # Cached tokens are replaced only with --refresh; a failed record also with
            # --retry-failed; a missing file that is back is simply extracted.
            allowed = refresh or previous.status == MISSING or (retry_failed and previous.status != "ok")
            if not allowed:
                plan.changed.append((item.path, previous.video_id))
                continue
            plan.again.add(vid)  # a changed file with --refresh, or a missing one that is back
            if previous.video_id != vid:
                plan.superseded[vid] = previous.video_id
        if vid in owner:
            if item.user_id is None and _same_bytes(owner[vid], item.path):
                plan.duplicates.append((item.path, owner[vid]))
            else:
                plan.collisions.append((item.path, owner[vid], vid))
            continue
        known = recorded.get(vid)
        if known is not None and item.user_id is None and known.path != resolved and stat is not None:
            # Another path holds this id in the cache: a moved or copied dataset (same bytes) or
            # a collision. When the recorded file is still there, compare the bytes themselves.
            if known.size != stat.st_size or (os.path.exists(known.path) and not _same_bytes(known.path, item.path)):
                plan.collisions.append((item.path, Path(known.path), vid))
                continue
        owner[vid] = item.path
        plan.ids.append((item, vid))
    return plan
