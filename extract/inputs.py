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

Paths may also be URLs (``s3://``, ``gs://``, ``http(s)://``; ``file://`` names a local path) and
WebDataset shards (tar files of ``KEY.mp4`` + ``KEY.json`` samples), whose samples are named
``<tar>#<member>``. Their bytes are read through ``extract/sources.py``; a remote file gets the
id its local copy would get (the same bytes are hashed), and a sample's id is its KEY.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import math
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from avfeat.core.errors import InputError
from avfeat.extract import sources
from avfeat.data.records import Status
from avfeat.extract.sources import Stat

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
# Remote globs: `?` is left out, as it starts a URL's query string.
_REMOTE_GLOB_CHARS = re.compile(r"[*\[]")
# A brace group that expands: `{00000..00099}` or `{a,b}` (a lone `{x}` is literal).
_BRACE_GROUP = re.compile(r"\{(?:[^{}]*,[^{}]*|-?\d+\.\.-?\d+)\}")
_MAX_BRACE_PIECES = 1_000_000
SHARD_SUFFIX = ".tar"
_SAMPLE_BYTES = 256 * 1024  # hashed from each end of a file: headers and index tables differ per encode


@dataclass(frozen=True)
class MediaInput:
    """One input named by INPUT: a media file or a segment of one and, from an input table, the
    user's id and the row's other columns."""

    # A local Path; a URL or a tar member (`<tar>#<member>`) stays a str, as Path("s3://b/k")
    # would become "s3:/b/k".
    path: str | Path
    user_id: str | None = None
    start: float | None = None  # seconds on the file's timeline; None: from its beginning
    end: float | None = None  # None: to its end
    metadata: dict = field(default_factory=dict, compare=False, hash=False)
    # Size and mtime when the listing already said (a tar's headers, an S3 listing): spares a
    # request per input in `assign_ids` and the job.
    stat: Stat | None = field(default=None, compare=False, hash=False)
    # (status, message) when the listing found the input unusable (a shard without media).
    problem: tuple[str, str] | None = field(default=None, compare=False, hash=False)

    @property
    def is_segment(self) -> bool:
        return self.start is not None or self.end is not None

    def segment_suffix(self) -> str:
        """What a segment adds to its file's id: ``_30-40`` (seconds), ``_30-end``."""
        if not self.is_segment:
            return ""
        return f"_{self.start or 0:g}-{'end' if self.end is None else format(self.end, 'g')}"


def _stem(path: str | Path) -> str:
    return _UNSAFE_ID_CHARS.sub("_", Path(sources.name(path)).stem).strip("_") or "video"


def content_key(path: str | Path) -> str:
    """64 bits of a hash of a file's size and its first and last 256 KiB (raises OSError).

    A URL or tar member is read with two range requests, so it gets its local copy's key."""
    digest = hashlib.blake2b(digest_size=8)
    with sources.open_bytes(path, readahead=False) as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(0)
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
        key = hashlib.blake2b(sources.resolve(path).encode(), digest_size=8).hexdigest()
    return f"{_stem(path)}-{key}"


# ---- reading INPUT -------------------------------------------------------------------------


def _folder(path: str | Path) -> str | Path:
    """The folder that relative entries of a list file or table are taken from."""
    return sources.parent(path) if sources.is_remote(path) else path.parent


def _from_list_file(path: str | Path) -> list[MediaInput]:
    entries = []
    if sources.is_remote(path):
        text = _read_remote(path).decode("utf-8-sig")
    else:
        text = path.read_text(encoding="utf-8-sig")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(MediaInput(_relative_to(_folder(path), line)))
    return entries


def _read_remote(url: str) -> bytes:
    """A list file or table given as a URL, whole, or one InputError line."""
    try:
        return sources.read_bytes(url)
    except OSError as error:
        raise InputError(f"cannot read {url}: {' '.join(str(error).split())}") from None


def _read_table(path: str | Path):
    """An input table as a typed pyarrow Table (CSV types are inferred; a byte-order mark is
    allowed), or one InputError line."""
    import pyarrow as pa

    suffix = sources.suffix(path)
    source = pa.BufferReader(_read_remote(path)) if sources.is_remote(path) else path
    try:
        if suffix == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(source, parse_options=pcsv.ParseOptions(newlines_in_values=True))
        elif suffix == ".jsonl":
            import pyarrow.json as pjson

            table = pjson.read_json(source)
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(source)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise InputError(f"cannot read {path} as {suffix[1:].upper()}: {' '.join(str(error).split())}") from None
    return table.rename_columns([name.strip() for name in table.column_names])


def _seconds(value, column: str, path: str | Path, number: int) -> float | None:
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{path} row {number}: {column} {value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InputError(f"{path} row {number}: {column} {value!r} must be a finite number of seconds >= 0")
    return seconds


def _from_table(path: str | Path) -> list[MediaInput]:
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
        entries.append(MediaInput(_relative_to(_folder(path), value), user_id or None, start, end, metadata))
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


def _relative_to(base: str | Path, entry: str) -> str | Path:
    """An entry of a list file or table: a URL as given (``file://`` as its local path), a
    relative path taken from ``base``, the folder (or folder URL) of that file."""
    if sources.protocol(entry) == "file":
        return local_path(entry)
    if sources.is_remote(entry):
        return entry
    candidate = Path(entry).expanduser()
    if candidate.is_absolute():
        return candidate
    return sources.join(base, entry) if isinstance(base, str) else base / candidate


def local_path(url: str) -> Path:
    """The local path a ``file://`` URL names (a ``#member`` after a tar is kept)."""
    parts = urlsplit(url)
    return Path(unquote(parts.path) + (f"#{parts.fragment}" if parts.fragment else ""))


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

    Each of these may be a URL (``s3://``, ``gs://``, ``http(s)://``: a folder is a prefix or a
    URL ending in ``/``; a remote glob uses ``*``, ``**`` and ``[...]``; ``file://`` names a local
    path), and so may the entries of list files and tables. A ``.tar`` file is a WebDataset shard
    (see ``_from_shard``); a brace pattern (``shards/{00000..00099}.tar``, ``{a,b}``) names several
    inputs, each read as above, where a piece that cannot be read is recorded with its status.
    """
    if sources.protocol(spec) == "file":
        spec = str(local_path(spec))
    pieces = [spec]
    if _BRACE_GROUP.search(spec) and (sources.is_remote(spec) or not Path(spec).expanduser().exists()):
        pieces = expand_braces(spec)
    found: list[MediaInput] = []
    for piece in pieces:
        items, where = _list_one(piece, many=len(pieces) > 1)
        found += items
    if len(pieces) > 1:
        where = f"pattern {spec}"
    unique: dict[tuple, MediaInput] = {}
    for item in found:
        unique.setdefault((sources.resolve(item.path), item.user_id, item.start, item.end), item)
    if not unique:
        raise InputError(f"no media files found in {where}")
    for url in {sources.protocol(item.path): item.path for item in unique.values() if sources.is_remote(item.path)}.values():
        sources.check_protocol(url)  # URLs from a list file or table: one line now, not a traceback later
    _same_types([item.metadata for item in unique.values() if sources.split_member(item.path)])
    return list(unique.values())


def _list_one(spec: str, many: bool) -> tuple[list[MediaInput], str]:
    """The inputs one INPUT (or one piece of a brace pattern) names, and where they were looked
    for. ``many``: a piece of a pattern, where a missing or unusable shard is recorded as failed
    rather than stopping the job."""
    if sources.is_remote(spec):
        return _list_remote(spec, many)
    path = Path(spec).expanduser()
    if path.is_dir():
        found = [MediaInput(p) for p in sorted(path.rglob("*")) if p.suffix.lower() in MEDIA_EXTENSIONS and p.is_file()]
        where = f"folder {path} (extensions: {' '.join(sorted(MEDIA_EXTENSIONS))})"
        if not found and any(path.glob(f"*{SHARD_SUFFIX}")):
            where += f"; for the WebDataset shards in it, give '{path / ('*' + SHARD_SUFFIX)}'"
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix in LIST_EXTENSIONS:
            found = _from_list_file(path)
        elif suffix in TABLE_EXTENSIONS:
            found = _from_table(path)
        elif suffix == SHARD_SUFFIX:
            found = _from_shard(path, many)
        else:
            found = [MediaInput(path)]
        where = str(path)
    elif _GLOB_CHARS.search(spec):
        found = [item for match in _glob_inside_root(spec) for item in _from_match(match)]
        where = f"pattern {spec}"
    elif many:
        found, where = [MediaInput(path)], str(path)  # recorded as missing
    else:
        raise InputError(f"input {spec} does not exist")
    return found, where


def _from_match(path: str | Path, stat: Stat | None = None) -> list[MediaInput]:
    """A file a glob matched: a shard's samples, or the file itself."""
    if sources.suffix(path) == SHARD_SUFFIX:
        return _from_shard(path, many=True)
    return [MediaInput(path, stat=stat)]


def _list_remote(url: str, many: bool) -> tuple[list[MediaInput], str]:
    """``_list_one`` for a URL: the kind of input is told by its extension (a request per
    guess would cost more than the listing), a folder is a URL with none."""
    sources.check_protocol(url)
    suffix = sources.suffix(url)
    try:
        if _REMOTE_GLOB_CHARS.search(url):
            matches = sources.list_files(url, pattern=True)
            return [item for match, stat in matches for item in _from_match(match, stat)], f"pattern {url}"
        if suffix == SHARD_SUFFIX:
            return _from_shard(url, many), url
        if suffix in LIST_EXTENSIONS:
            return _from_list_file(url), url
        if suffix in TABLE_EXTENSIONS:
            return _from_table(url), url
        if suffix in MEDIA_EXTENSIONS or many:
            if not many:
                sources.stat(url)  # a single file that is not there is an error, as a local one is
            return [MediaInput(url)], url
        found = [MediaInput(match, stat=stat) for match, stat in sources.list_files(url, pattern=False) if sources.suffix(match) in MEDIA_EXTENSIONS]
        return found, f"folder {url} (extensions: {' '.join(sorted(MEDIA_EXTENSIONS))})"
    except FileNotFoundError:
        raise InputError(f"input {url} does not exist") from None
    except OSError as error:
        raise InputError(" ".join(str(error).split())) from None


def expand_braces(pattern: str) -> list[str]:
    """Bash-style brace expansion, in order without repeats: ``{00000..00099}`` (numbers,
    zero-padded as their bounds are), ``{a,b}``, several groups and nested ones."""
    match = next((m for m in re.finditer(r"\{([^{}]*)\}", pattern) if _BRACE_GROUP.fullmatch(m.group(0))), None)
    if match is None:
        return [pattern]
    body = match.group(1)
    bounds = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if bounds:
        first, last = int(bounds.group(1)), int(bounds.group(2))
        if abs(last - first) >= _MAX_BRACE_PIECES:
            raise InputError(f"{pattern}: {{{body}}} names more than {_MAX_BRACE_PIECES:,} inputs")
        padded = any(len(b.lstrip("-")) > 1 and b.lstrip("-").startswith("0") for b in bounds.groups())
        width = max(len(b) for b in bounds.groups()) if padded else 0
        step = 1 if last >= first else -1
        choices = [f"{n:0{width}d}" for n in range(first, last + step, step)]
    else:
        choices = body.split(",")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return list(dict.fromkeys(out for choice in choices for out in expand_braces(head + choice + tail)))


# ---- WebDataset shards -----------------------------------------------------------------------


def _sample_key(name: str) -> str:
    """A WebDataset sample's key: the member name up to the first dot of its file name."""
    folder, _, base = name.removeprefix("./").rpartition("/")
    return f"{folder}/{base.split('.', 1)[0]}" if folder else base.split(".", 1)[0]


def _key_id(key: str) -> str:
    """A sample's id: its key, with the characters ids may not hold replaced by '_'."""
    vid = _UNSAFE_ID_CHARS.sub("_", key).strip("_")
    return vid if vid.strip(".") else "sample"


def _from_shard(tar: str | Path, many: bool) -> list[MediaInput]:
    """The samples of a WebDataset shard as video2dataset writes them: per KEY a media member
    (``KEY.mp4`` or another media extension), ``KEY.json`` (its fields become the video's
    metadata) and maybe ``KEY.txt`` (kept as the field ``txt``). A sample's path is
    ``<tar>#<member>`` and its id is its KEY. Only the tar's headers and small members are read.

    A shard that cannot be read or holds no media member is one InputError line when it is the
    INPUT itself; as a piece of a pattern (``many``) it is recorded as one failed input, so one
    bad shard of a thousand does not stop the job.
    """
    try:
        members, texts = sources.scan_tar(tar, keep=lambda name: name.lower().endswith((".json", ".txt")))
    except (OSError, tarfile.TarError) as error:
        if isinstance(error, tarfile.TarError):
            message = f"{tar} is not a readable tar file ({' '.join(str(error).split())})"
        else:
            message = " ".join(str(error).split())
        if not many:
            raise InputError(message) from None
        status = sources.status_of(error) if isinstance(error, OSError) else Status.UNREADABLE
        return [MediaInput(tar, problem=(status, message))]
    samples: dict[str, MediaInput] = {}
    for member in members:
        key = _sample_key(member.name)
        if key in samples or Path(member.name).suffix.lower() not in MEDIA_EXTENSIONS:
            continue  # a sample's first media member is its video
        metadata = _sample_metadata(_find_text(texts, member.name, key, ".json"), _find_text(texts, member.name, key, ".txt"))
        samples[key] = MediaInput(f"{tar}#{member.name}", _key_id(key), metadata=metadata, stat=Stat(member.size, member.mtime))
    if not samples:
        message = f"{tar} holds no media samples (KEY.mp4 + KEY.json, as video2dataset writes; media extensions: {' '.join(sorted(MEDIA_EXTENSIONS))})"
        if not many:
            raise InputError(message)
        return [MediaInput(tar, problem=(Status.NO_MEDIA, message))]
    return list(samples.values())


def _find_text(texts: dict[str, bytes], media: str, key: str, suffix: str) -> bytes | None:
    """The bytes of the sample's ``KEY<suffix>`` member, named as the media member is."""
    folder = media.rpartition("/")[0]
    base = key.rpartition("/")[2]
    return texts.get(f"{folder}/{base}{suffix}" if folder else f"{base}{suffix}")


def _sample_metadata(json_bytes: bytes | None, txt: bytes | None) -> dict:
    """A sample's metadata: the JSON object's fields, flat (nested values as given). A field
    named like a manifest column (``status``, ``width``, ...) is kept as ``json_<name>``."""
    from avfeat.data.records import RESERVED_COLUMNS

    fields = {}
    if json_bytes is not None:
        try:
            value = json.loads(json_bytes)
        except ValueError:
            value = None  # a damaged .json: the video is still extracted, without metadata
        fields = value if isinstance(value, dict) else {} if value is None else {"json": value}
    if txt is not None and "txt" not in fields:
        fields["txt"] = txt.decode("utf-8", errors="replace")
    return {f"json_{name}" if name in RESERVED_COLUMNS else name: _without_empty(value) for name, value in fields.items()}


def _without_empty(value):
    """Empty objects become None: Parquet cannot store a struct without fields."""
    if isinstance(value, dict):
        value = {k: _without_empty(v) for k, v in value.items()}
        return value or None
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value


def _same_types(rows: list[dict]) -> None:
    """Make each metadata field one type across the samples (in place): a field whose values
    have none in common (a number here, text there) is kept as JSON text, so that the manifest
    parts of one run can be read together."""
    import pyarrow as pa

    for name in dict.fromkeys(key for row in rows for key in row):
        try:
            pa.array([row.get(name) for row in rows])
        except (pa.ArrowException, TypeError, ValueError):
            for row in rows:
                if row.get(name) is not None:
                    row[name] = json.dumps(row[name], sort_keys=True)


# ---- ids against what the cache holds ------------------------------------------------------


@dataclass
class IdPlan:
    """Each input's id, and what deciding them found."""

    ids: list[tuple[MediaInput, str]] = field(default_factory=list)  # inputs to consider, in order
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


def assign_ids(inputs: list[MediaInput], recorded: dict, refresh: bool = False, retry_failed: bool = False) -> IdPlan:
    """Give every input its id (see the module docstring), checked against the cache's records
    (``{video_id: VideoRecord}``). ``refresh`` and ``retry_failed`` say which changed files
    may be extracted again (see `avfeat extract --help`).

    A record of the same path with the same size and mtime gives its id without reading the
    file, so resuming a large job reads nothing twice.
    """
    by_path = {(record.path, record.segment_start, record.segment_end): record for record in recorded.values()}
    plan = IdPlan()
    owner: dict[str, str | Path] = {}  # id → the input of this run that has it
    for item in inputs:
        resolved = sources.resolve(item.path)
        previous = by_path.get((resolved, item.start, item.end))
        try:
            stat = item.stat or sources.stat(item.path)
        except OSError:
            stat = None
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
            if known.size != stat.size or (sources.exists(known.path) and not _same_bytes(known.path, item.path)):
                plan.collisions.append((item.path, known.path if sources.is_remote(known.path) else Path(known.path), vid))
                continue
        owner[vid] = item.path
        plan.ids.append((item, vid))
    return plan
