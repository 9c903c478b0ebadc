"""Input tables: a CSV, Parquet or JSONL file with a ``path`` column (optional ``id``, ``start``,
``end``; other columns become metadata), and the published dataset CSV layouts (vggsound,
audioset) whose rows name segments of full-length videos."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from avfeat.core.errors import InputError
from avfeat.extract import sources
from avfeat.extract.inputs.ids import check_id
from avfeat.extract.inputs.items import MEDIA_EXTENSIONS, UNSAFE_ID_CHARS, MediaInput, folder_of, read_remote, relative_to

# Published CSV layouts (no header of ours): how their columns map to id, file and segment.
LAYOUTS = ("vggsound", "audioset")
MAX_SECONDS = 1e7  # a start or end beyond 115 days is a typo or a unit mix-up, not a time in a video
_TIME_COLUMNS = ("start", "end")


def _read_table(path: str | Path):
    """An input table as a typed pyarrow Table (CSV types are inferred; a byte-order mark is
    allowed), or one InputError line."""
    import pyarrow as pa

    suffix = sources.suffix(path)
    source = pa.BufferReader(read_remote(path)) if sources.is_remote(path) else path
    try:
        if suffix == ".csv":
            import pyarrow.csv as pcsv

            parse = pcsv.ParseOptions(newlines_in_values=True)
            table = pcsv.read_csv(source, parse_options=parse)
            # Times are read as text: CSV inference turns 'nan' into a null (a whole file) where
            # Parquet and JSONL keep NaN; as text, every format meets one rule (_seconds).
            raw = {name: pa.string() for name in table.column_names if name.strip() in _TIME_COLUMNS}
            if raw:
                source = pa.BufferReader(read_remote(path)) if sources.is_remote(path) else path
                table = pcsv.read_csv(source, parse_options=parse, convert_options=pcsv.ConvertOptions(column_types=raw))
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
    """A start or end cell in seconds (None: empty), the same rule for every table format.

    Raises:
        InputError: one line naming the row: not a number (a bool too), NaN, infinite, negative
            or over ``MAX_SECONDS``.
    """
    if isinstance(value, str):
        value = value.strip()
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise TypeError(value)
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{path} row {number}: {column} {value!r} is not a number of seconds") from None
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_SECONDS):
        raise InputError(f"{path} row {number}: {column} {value!r} must be a finite number of seconds >= 0 and at most {MAX_SECONDS:g}")
    return seconds + 0.0  # -0.0 is 0


def from_table(path: str | Path) -> list[MediaInput]:
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
            check_id(user_id, f"{path} row {number}")
        start, end = _seconds(row.get("start"), "start", path, number), _seconds(row.get("end"), "end", path, number)
        if end is not None and end <= (start or 0.0):
            raise InputError(f"{path} row {number}: end {end:g} is not after start {start or 0:g}")
        metadata = {name: row[name] for name in extra}
        entries.append((number, MediaInput(relative_to(folder_of(path), value), user_id or None, start, end, metadata)))
    _refuse_repeats(path, entries)
    return [entry for _, entry in entries]


def _refuse_repeats(path: str | Path, entries: list[tuple[int, MediaInput]]) -> None:
    """Refuse two rows with one id, or naming one segment (path, start, end) twice: a table
    that lists a clip twice is a mistake to show, not to merge silently."""
    ids: dict[str, tuple[int, MediaInput]] = {}
    spans: dict[tuple, int] = {}
    for number, entry in entries:
        if entry.user_id is not None:
            first, other = ids.setdefault(entry.user_id, (number, entry))
            if first != number:
                raise InputError(f"{path}: id {entry.user_id!r} is given to two rows ({other.path} and {entry.path})")
        span = (sources.resolve(entry.path), entry.start, entry.end)
        first = spans.setdefault(span, number)
        if first != number:
            what = "the whole file" if not entry.is_segment else f"the segment {entry.start or 0:g}-{'end' if entry.end is None else format(entry.end, 'g')}"
            raise InputError(f"{path}: rows {first} and {number} both name {what} of {entry.path}; remove one")


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
            if end is None or end <= start:
                raise InputError(f"{path} row {number}: the {layout} layout needs an end time after the start {start:g}")
            metadata = {"labels": [label.strip() for label in ",".join(fields[3:]).split(",") if label.strip()]}
        user_id = f"{UNSAFE_ID_CHARS.sub('_', ytid)}_{start:g}-{end:g}"
        check_id(user_id, f"{path} row {number}")
        entries.append(MediaInput(_find_media(media_dir, ytid), user_id, start, end, metadata))
    return entries
