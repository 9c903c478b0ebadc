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
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from avfeat.errors import InputError

MEDIA_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .wmv .mpg .mpeg .ts .mts .m2ts .3gp .ogv .vob".split()
)
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
TABLE_EXTENSIONS = frozenset({".csv", ".parquet", ".jsonl"})
# Published CSV layouts (no header of ours): how their columns map to id, file and segment.
LAYOUTS = ("vggsound", "audioset")
_GLOB_CHARS = re.compile(r"[*?\[]")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_BAD_USER_ID = re.compile(r"[\s@/\\]|^\.{0,2}$")  # '@' starts a time range in `ID@START-END` queries
MISSING = "missing"  # the status of a listed file that does not exist
_SAMPLE_BYTES = 256 * 1024  # hashed from each end of a file: headers and index tables differ per encode


@dataclass(frozen=True)
class MediaInput:
    """One input named by INPUT: a media file or a segment of one and, from an input table, the
    user's id and the row's other columns."""

    path: Path
    user_id: str | None = None
    start: float | None = None  # seconds on the file's timeline; None: from its beginning
    end: float | None = None  # None: to its end
    metadata: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_segment(self) -> bool:
        return self.start is not None or self.end is not None

    def segment_suffix(self) -> str:
        """What a segment adds to its file's id: ``_30-40`` (seconds), ``_30-end``."""
        if not self.is_segment:
            return ""
        return f"_{self.start or 0:g}-{'end' if self.end is None else format(self.end, 'g')}"


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


def _read_table(path: Path):
    """An input table as a typed pyarrow Table (CSV types are inferred; a byte-order mark is
    allowed), or one InputError line."""
    import pyarrow as pa

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(newlines_in_values=True))
        elif suffix == ".jsonl":
            import pyarrow.json as pjson

            table = pjson.read_json(path)
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise InputError(f"cannot read {path} as {suffix[1:].upper()}: {' '.join(str(error).split())}") from None
    return table.rename_columns([name.strip() for name in table.column_names])


def _seconds(value, column: str, path: Path, number: int) -> float | None:
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{path} row {number}: {column} {value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InputError(f"{path} row {number}: {column} {value!r} must be a finite number of seconds >= 0")
    return seconds


def _from_table(path: Path) -> list[MediaInput]:
    import pyarrow.types as pa_types

    from avfeat.data.records import RESERVED_COLUMNS

    table = _read_table(path)
    columns = table.column_names
    if "path" not in columns:
        raise InputError(f"{path} has no 'path' column (columns: {', '.join(columns)})")
    if not pa_types.is_string(table.schema.field("path").type) and not pa_types.is_large_string(table.schema.field("path").type):
        raise InputError(f"{path}: 'path' must be text, not {table.schema.field('path').type}")
    clash = sorted(set(columns) & RESERVED_COLUMNS - {"path", "id", "start", "end"})
    if clash:
        raise InputError(f"{path}: column(s) {', '.join(clash)} are names the manifest uses; rename them")
    extra = [name for name in columns if name not in ("path", "id", "start", "end")]
    entries = []
    for number, row in enumerate(table.to_pylist(), start=1):
        value = row["path"]
        if value is None or value == "":
            continue
        user_id = row.get("id")
        if user_id is not None and user_id != "":
            user_id = str(user_id).strip()
            if _BAD_USER_ID.search(user_id):
                raise InputError(f"{path} row {number}: id {user_id!r} is empty or has a space, '@', '/' or '\\' (ids appear in ID@START-END queries)")
        start, end = _seconds(row.get("start"), "start", path, number), _seconds(row.get("end"), "end", path, number)
        if start is not None and end is not None and end <= start:
            raise InputError(f"{path} row {number}: end {end:g} is not after start {start:g}")
        metadata = {name: row[name] for name in extra}
        entries.append(MediaInput(_relative_to(path.parent, value), user_id or None, start, end, metadata))
    seen: dict[str, int] = {}
    for number, entry in enumerate(entries, start=1):
        if entry.user_id is not None and seen.setdefault(entry.user_id, number) != number:
            raise InputError(f"{path}: id {entry.user_id!r} is given to two rows ({entries[seen[entry.user_id] - 1].path} and {entry.path})")
    return entries


def _find_media(folder: Path, name: str) -> Path:
    """``folder/name.<media extension>``, whichever exists (``name.mp4`` when none does, so it
    is recorded as missing)."""
    for suffix in (".mp4", ".mkv", ".webm", *sorted(MEDIA_EXTENSIONS)):
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return folder / f"{name}.mp4"


def from_layout(path: Path, layout: str, media_dir: Path, clip_seconds: float = 10.0) -> list[MediaInput]:
    """Inputs from a published dataset CSV, with full-length videos named ``YTID.<ext>`` in
    ``media_dir``: each row becomes the segment it names, with its labels as metadata.

    - ``vggsound``: ``ytid,start_seconds,label,split`` (no header); a 10 s clip from start.
    - ``audioset``: ``YTID, start_seconds, end_seconds, positive_labels`` ('#' lines are
      comments); labels are the quoted comma-separated MIDs, kept as a list.
    """
    if layout not in LAYOUTS:
        raise InputError(f"unknown --layout {layout!r} ({', '.join(LAYOUTS)})")
    entries = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        lines = (line for line in handle if not line.lstrip().startswith("#"))
        rows = [row for row in csv.reader(lines, skipinitialspace=True) if row]
    for number, row in enumerate(rows, start=1):
        fields = [cell.strip() for cell in row]
        if len(fields) < 4:
            raise InputError(f"{path} row {number}: {len(fields)} columns, the {layout} layout has 4")
        ytid, start = fields[0], _seconds(fields[1], "start", path, number)
        if not ytid or start is None:
            raise InputError(f"{path} row {number}: the {layout} layout needs an id and a start time")
        if layout == "vggsound":
            end = start + clip_seconds
            metadata = {"label": fields[2], "split": fields[3]}
        else:
            end = _seconds(fields[2], "end", path, number)
            metadata = {"labels": [label.strip() for label in ",".join(fields[3:]).split(",") if label.strip()]}
        user_id = f"{_UNSAFE_ID_CHARS.sub('_', ytid)}_{start:g}-{end:g}"
        entries.append(MediaInput(_find_media(media_dir, ytid), user_id, start, end, metadata))
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
    ``path`` column (optional: ``id``, and ``start``/``end`` seconds for a segment; every other
    column is kept as the video's metadata), or one media file. Relative paths in list files
    and tables are taken relative to that file's folder.
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
    unique: dict[tuple, MediaInput] = {}
    for item in found:
        unique.setdefault((str(item.path.resolve()), item.user_id, item.start, item.end), item)
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
    by_path = {(record.path, record.segment_start, record.segment_end): record for record in recorded.values()}
    plan = IdPlan()
    owner: dict[str, Path] = {}  # id → the input of this run that has it
    for item in inputs:
        resolved = str(item.path.resolve())
        previous = by_path.get((resolved, item.start, item.end))
        try:
            stat = os.stat(item.path)
        except OSError:
            stat = None
        if item.user_id is not None:
            vid = item.user_id
        elif previous is not None and (stat is None or (previous.size, previous.mtime) == (stat.st_size, stat.st_mtime)):
            vid = previous.video_id
        else:
            vid = video_id(item.path) + item.segment_suffix()
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
