"""Turning the INPUT argument of `avfeat extract` into a list of media files."""

from __future__ import annotations

import csv
import glob
import hashlib
import re
from pathlib import Path

from avfeat.errors import InputError

MEDIA_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .wmv .mpg .mpeg .ts .mts .m2ts .3gp .ogv .vob".split()
)
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
TABLE_EXTENSIONS = frozenset({".csv", ".parquet"})
_GLOB_CHARS = re.compile(r"[*?\[]")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def video_id(path: str | Path) -> str:
    """A stable, readable id: the file's stem plus a hash of its absolute path.

    The hash keeps ids unique when two folders hold files of the same name; the character set
    leaves '@' free for `VIDEO_ID@START-END` queries.
    """
    resolved = str(Path(path).resolve())
    stem = _UNSAFE_ID_CHARS.sub("_", Path(path).stem).strip("_") or "video"
    return f"{stem}-{hashlib.sha1(resolved.encode()).hexdigest()[:8]}"


def _from_list_file(path: Path) -> list[Path]:
    entries = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(line)
    return [_relative_to(path.parent, entry) for entry in entries]


def _from_table(path: Path) -> list[Path]:
    if path.suffix == ".csv":
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise InputError(f"{path} has no 'path' column (columns: {', '.join(reader.fieldnames or [])})")
            entries = [row["path"] for row in reader if row["path"]]
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as error:  # pyarrow raises several unrelated types for a bad file
            raise InputError(f"cannot read {path} as Parquet: {error}") from None
        if "path" not in table.column_names:
            raise InputError(f"{path} has no 'path' column (columns: {', '.join(table.column_names)})")
        entries = [p for p in table.column("path").to_pylist() if p]
    return [_relative_to(path.parent, entry) for entry in entries]


def _relative_to(base: Path, entry: str) -> Path:
    candidate = Path(entry).expanduser()
    return candidate if candidate.is_absolute() else base / candidate


def list_inputs(spec: str) -> list[Path]:
    """Media files named by INPUT, in a stable order, without duplicates.

    INPUT is a folder (searched recursively for media extensions), a glob pattern, a text file
    with one path per line, a CSV or Parquet file with a ``path`` column, or one media file.
    Relative paths in list files are taken relative to the list file's folder.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in MEDIA_EXTENSIONS and p.is_file())
        where = f"folder {path} (extensions: {' '.join(sorted(MEDIA_EXTENSIONS))})"
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix in LIST_EXTENSIONS:
            found = _from_list_file(path)
        elif suffix in TABLE_EXTENSIONS:
            found = _from_table(path)
        else:
            found = [path]
        where = str(path)
    elif _GLOB_CHARS.search(spec):
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        where = f"pattern {spec}"
    else:
        raise InputError(f"input {spec} does not exist")
    unique: dict[str, Path] = {}
    for item in found:
        unique.setdefault(str(item.resolve()), item)
    if not unique:
        raise InputError(f"no media files found in {where}")
    return list(unique.values())
