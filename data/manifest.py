"""The cache's Parquet manifest: one part per shard (``manifest/part-NNNNN.parquet``), one row
per input video of that shard (ok or failed), in :func:`manifest_schema` followed by the input
table's metadata columns. When the same video is recorded twice (a failure retried later), the
record in the highest part wins.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Mapping
from functools import cached_property, partial
from typing import Any, Iterator, NamedTuple, Sequence

from avfeat.core.errors import CacheError
from avfeat.core.values import one_line
from avfeat.data.layout import CacheLayout, shard_name
from avfeat.data.records import Status, VideoRecord


def manifest_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("video_id", pa.string()),
            ("path", pa.string()),
            ("size", pa.int64()),
            ("mtime", pa.float64()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("duration", pa.float64()),
            ("shard", pa.int32()),
            ("audio_offset", pa.int64()),
            ("audio_length", pa.int64()),
            ("audio_start", pa.float64()),
            ("audio_rate", pa.float64()),
            ("visual_offset", pa.int64()),
            ("visual_length", pa.int64()),
            ("fps", pa.float64()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("source_sample_rate", pa.int32()),
            ("audio_level", pa.float64()),  # dBFS, RMS of the decoded sound
            ("segment_start", pa.float64()),  # an input table's start and end (null: the whole file)
            ("segment_end", pa.float64()),
            ("shard_sha256", pa.string()),  # of the whole shard file, checked by `avfeat info --verify`
            ("shard_bytes", pa.int64()),  # its size, checked whenever a reader opens it
        ]
    )



def _conform(table, columns: Sequence[str] | None = None):
    """A manifest part in the current schema (columns a part from an older avfeat lacks are
    null), followed by its metadata columns as they were written; with ``columns``, only those
    of the schema, in that order."""
    import pyarrow as pa

    schema = manifest_schema()
    if columns is not None:
        schema = pa.schema([schema.field(name) for name in columns])
    names = set(table.column_names)  # a list built per call: once per part, not per field
    for field in schema:
        if field.name not in names:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    known = set(schema.names)
    metadata = [field for field in table.schema if field.name not in known] if columns is None else []
    target = pa.schema([*schema, *metadata])
    if table.schema.equals(target, check_metadata=True):  # as this avfeat writes a part: a thousand casts cost a second
        return table
    return table.select(schema.names + [f.name for f in metadata]).cast(target)


def part_table(rows: list[dict[str, Any]]):
    """A manifest part: the records' fields in the manifest schema, then their metadata columns
    (types as the input table gave them; a column some rows lack is null there)."""
    import pyarrow as pa

    table = pa.Table.from_pylist(rows, schema=manifest_schema())
    names = dict.fromkeys(key for row in rows for key in row if key not in table.column_names)
    for name in names:
        table = table.append_column(name, pa.array([row.get(name) for row in rows]))
    return table


_READERS = 4  # threads reading parts: a part's read waits on the disk and on pyarrow, not the GIL


def _read_part(path: Path, columns: Sequence[str] | None = None):
    import pyarrow.parquet as pq

    # Columns an older part lacks are left out of the read; _conform adds them as nulls.
    return _conform(pq.ParquetFile(path, page_checksum_verification=True).read(columns=columns, use_threads=False), columns)


def read_manifest(root: str | Path, columns: Sequence[str] | None = None):
    """All committed manifest rows as a pyarrow Table, latest record per video; with
    ``columns`` (of :func:`manifest_schema`), only those, in the schema's order, and only they
    are read from disk (``video_id`` and ``status`` always: picking the latest record needs them)."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.compute as pc

    layout = CacheLayout(Path(root))
    parts = layout.parts()
    if columns is not None:  # in the schema's order, as a part holds them: no part then needs a cast
        columns = [name for name in manifest_schema().names if name in {"video_id", "status", *columns}]
    if not parts:
        return _conform(pa.table({}), columns) if columns is not None else manifest_schema().empty_table()
    order = sorted(parts)
    with ThreadPoolExecutor(min(_READERS, len(order))) as pool:
        reads = [pool.submit(_read_part, parts[index], columns) for index in order]
    tables = []
    for index, read in zip(order, reads):
        try:
            tables.append(read.result())
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise CacheError(
                f"manifest part {parts[index]} is damaged ({one_line(error)}); restore it, or remove it and "
                f"{layout.shard_dir / shard_name(index)} and run `avfeat extract --resume` to extract those videos again"
            ) from None
    try:  # runs with different input tables add different metadata columns: nulls elsewhere
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise CacheError(f"the manifest parts of {layout.root} hold one metadata column with two types ({one_line(error)})") from None
    retired = pc.equal(table.column("status"), Status.SUPERSEDED.value)
    if pc.count_distinct(table.column("video_id")).as_py() == table.num_rows:  # no video recorded twice
        return table.filter(pc.invert(retired)) if pc.any(retired).as_py() else table
    # A retried video appears in several parts; keep its last record, unless that retires it.
    ids, statuses = table.column("video_id").to_pylist(), table.column("status").to_pylist()
    last = {video_id: row for row, video_id in enumerate(ids)}
    keep = sorted(row for row in last.values() if statuses[row] != Status.SUPERSEDED)
    return table if len(keep) == len(ids) else table.take(keep)


class Recorded(NamedTuple):
    """What deciding an input's id and whether to extract it needs of a record (the fields of
    :class:`VideoRecord` of those names): a million of these build in a second, not ten."""

    video_id: str
    path: str
    size: int
    mtime: float
    status: str
    duration: float
    segment_start: float | None
    segment_end: float | None

    @property
    def ok(self) -> bool:
        return self.status == Status.OK


_new_recorded = partial(tuple.__new__, Recorded)  # Recorded._make without a Python call per row


class ManifestRecords(Mapping):
    """A manifest table as ``{video_id: VideoRecord}`` in manifest order, each record built when
    asked for: opening a cache of a million videos builds none of them."""

    _SINGLE = 1000  # records built one by one before building them all at once is cheaper

    def __init__(self, table):
        self.table = table
        self.ids: list[str] = table.column("video_id").to_pylist()
        self._all: list[VideoRecord] | None = None
        self._some: dict[str, VideoRecord] = {}

    @cached_property
    def _row(self) -> dict[str, int]:  # built when first asked: a resume plan never asks
        return dict(zip(self.ids, range(len(self.ids))))

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._row

    def __getitem__(self, video_id: str) -> VideoRecord:
        row = self._row[video_id]
        if self._all is not None:
            return self._all[row]
        if len(self._some) >= self._SINGLE:
            return self.all()[row]
        if video_id not in self._some:
            self._some[video_id] = VideoRecord.from_row(self.table.slice(row, 1).to_pylist()[0])
        return self._some[video_id]

    def all(self) -> list[VideoRecord]:
        """Every record, in manifest order."""
        if self._all is None:
            self._all = [VideoRecord.from_row(row) for row in self.table.to_pylist()]
        return self._all

    def column(self, name: str) -> list:
        """One manifest column as a list, in manifest order."""
        return self.table.column(name).to_pylist()

    def recorded(self) -> dict[str, Recorded]:
        """``{video_id: Recorded}`` of every row, built column by column."""
        columns = [self.ids, *(self.column(name) for name in Recorded._fields[1:])]
        return dict(zip(self.ids, map(_new_recorded, zip(*columns))))
