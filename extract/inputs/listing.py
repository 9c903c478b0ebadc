"""Listing what INPUT names: a folder, a glob, a list file, a table, a shard or one file, local
or remote, and brace patterns (``shards/{00000..00099}.tar``, ``{a,b}``) of several of them."""

from __future__ import annotations

import glob
import os
import re
from stat import S_ISLNK, S_ISREG
from pathlib import Path

from braceexpand import UnbalancedBracesError, braceexpand

from avfeat.core.errors import InputError
from avfeat.extract import sources
from avfeat.extract.inputs.ids import check_name
from avfeat.extract.inputs.items import (
    LIST_EXTENSIONS,
    MEDIA_EXTENSIONS,
    SHARD_SUFFIX,
    TABLE_EXTENSIONS,
    MediaInput,
    folder_of,
    local_path,
    read_remote,
    relative_to,
)
from avfeat.extract.inputs.shards import from_shard, same_types
from avfeat.extract.inputs.tables import from_table
from avfeat.extract.sources import Stat

_GLOB_CHARS = re.compile(r"[*?\[]")
# Remote globs: `?` is left out, as it starts a URL's query string.
_REMOTE_GLOB_CHARS = re.compile(r"[*\[]")
# A brace group that expands: `{00000..00099}` or `{a,b}` (a lone `{x}` is literal).
_BRACE_GROUP = re.compile(r"\{(?:[^{}]*,[^{}]*|-?\d+\.\.-?\d+)\}")
_BRACE_RANGE = re.compile(r"\{(-?\d+)\.\.(-?\d+)(?:\.\.-?\d+)?\}")
_MAX_BRACE_PIECES = 1_000_000


def _from_list_file(path: str | Path) -> list[MediaInput]:
    entries = []
    if sources.is_remote(path):
        text = read_remote(path).decode("utf-8-sig")
    else:
        text = path.read_text(encoding="utf-8-sig")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(MediaInput(relative_to(folder_of(path), line)))
    return entries


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
    (see ``shards.from_shard``); a brace pattern (``shards/{00000..00099}.tar``, ``{a,b}``) names several
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
    resolve = sources.resolver()  # each folder once: a folder of a million files is not a million resolves
    for item in found:
        unique.setdefault((resolve(item.path, item.link), item.user_id, item.start, item.end), item)
    if not unique:
        raise InputError(f"no media files found in {where}")
    for item in unique.values():
        if item.user_id is None:
            check_name(item.path)  # its id would be derived from that name
    for url in {sources.protocol(item.path): item.path for item in unique.values() if sources.is_remote(item.path)}.values():
        sources.check_protocol(url)  # URLs from a list file or table: one line now, not a traceback later
    same_types([item.metadata for item in unique.values() if sources.split_member(item.path)])
    return list(unique.values())


def _list_one(spec: str, many: bool) -> tuple[list[MediaInput], str]:
    """The inputs one INPUT (or one piece of a brace pattern) names, and where they were looked
    for. ``many``: a piece of a pattern, where a missing or unusable shard is recorded as failed
    rather than stopping the job."""
    if sources.is_remote(spec):
        return _list_remote(spec, many)
    path = Path(spec).expanduser()
    if path.is_dir():
        found = [item for p in sorted(path.rglob("*")) if p.suffix.lower() in MEDIA_EXTENSIONS for item in _listed_file(p)]
        where = f"folder {path} (extensions: {' '.join(sorted(MEDIA_EXTENSIONS))})"
        if not found and any(path.glob(f"*{SHARD_SUFFIX}")):
            where += f"; for the WebDataset shards in it, give '{path / ('*' + SHARD_SUFFIX)}'"
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix in LIST_EXTENSIONS:
            found = _from_list_file(path)
        elif suffix in TABLE_EXTENSIONS:
            found = from_table(path)
        elif suffix == SHARD_SUFFIX:
            found = from_shard(path, many)
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


def _listed_file(path: Path) -> list[MediaInput]:
    """A file a folder holds (a link to one included), told by one lstat where ``is_file``
    would stat: the input then says it is no link, sparing its resolve an lstat on resume."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return []
    if S_ISREG(mode):
        return [MediaInput(path, link=False)]
    return [MediaInput(path)] if S_ISLNK(mode) and path.is_file() else []


def _from_match(path: str | Path, stat: Stat | None = None) -> list[MediaInput]:
    """A file a glob matched: a shard's samples, or the file itself."""
    if sources.suffix(path) == SHARD_SUFFIX:
        return from_shard(path, many=True)
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
            return from_shard(url, many), url
        if suffix in LIST_EXTENSIONS:
            return _from_list_file(url), url
        if suffix in TABLE_EXTENSIONS:
            return from_table(url), url
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
    """Bash-style brace expansion (the ``braceexpand`` library), in order without repeats:
    ``{00000..00099}`` (numbers, zero-padded as their bounds are), ``{a,b}``, several groups and
    nested ones; a lone ``{x}`` stays as written. Backslashes are kept as they are (no escapes).

    Raises:
        InputError: a numeric range of more than ``_MAX_BRACE_PIECES`` inputs, or unbalanced
            braces (one line each).
    """
    for bounds in _BRACE_RANGE.finditer(pattern):
        if abs(int(bounds.group(2)) - int(bounds.group(1))) >= _MAX_BRACE_PIECES:
            raise InputError(f"{pattern}: {bounds.group(0)} names more than {_MAX_BRACE_PIECES:,} inputs")
    try:
        return list(dict.fromkeys(braceexpand(pattern, escape=False)))
    except UnbalancedBracesError:
        raise InputError(f"{pattern}: unbalanced braces (each '{{' needs its '}}')") from None
