"""The audit table's Parquet boundary: tables written before AuditRow existed still load, and
AuditRow writes the same columns and types."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avfeat.core.errors import InputError
from avfeat.data.audit_table import AuditRow, WorstWindow, read_audit, write_audit

# The schema of version 1 of the table, spelled out here on purpose (not audit_schema()): what
# the writer of avfeat's audit has always produced.
WINDOW = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("score", pa.float64())])
V1_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("path", pa.string()), ("duration", pa.float64()),
    ("correspondence", pa.float64()), ("p_match", pa.float64()), ("p_belongs", pa.float64()),
    ("offset", pa.float64()), ("sync_confidence", pa.float64()), ("p_sync", pa.float64()),
    ("silent", pa.bool_()), ("static", pa.bool_()), ("audio_level", pa.float64()), ("visual_spread", pa.float64()),
    ("worst_windows", pa.list_(WINDOW)),
])
ROWS = [
    {"video_id": "a", "path": "/v/a.mp4", "duration": 8.0, "correspondence": 0.12, "p_match": 0.93, "p_belongs": 0.97,
     "offset": 0.0, "sync_confidence": 0.4, "p_sync": 0.9, "silent": False, "static": False, "audio_level": -23.5,
     "visual_spread": 0.21, "worst_windows": [{"start": 2.0, "end": 4.0, "score": -0.01}, {"start": 0.0, "end": 2.0, "score": 0.03}]},
    # A cache without recorded levels (silent unknown) and a hand-written row's nulls.
    {"video_id": "b", "path": "/v/b.mp4#t=1,5", "duration": None, "correspondence": -0.05, "p_match": 0.08, "p_belongs": None,
     "offset": -0.6, "sync_confidence": None, "p_sync": 0.02, "silent": None, "static": True, "audio_level": None,
     "visual_spread": 0.0, "worst_windows": None},
]
META = {"version": 1, "cache": {"path": "/somewhere/cache", "fingerprint": "0123456789abcdef"},
        "heads": {"path": "/somewhere/heads", "fingerprint": "fedcba9876543210"}}


class FakeCache:
    """What the table's reader and writer ask of a cache."""

    def __init__(self, root: str, fingerprint: str, ids=()):
        self.layout = type("Layout", (), {"root": Path(root)})()
        self._fingerprint, self._ids = fingerprint, ids

    def fingerprint(self) -> str:
        return self._fingerprint

    def records(self, status=None):
        return [type("Record", (), {"video_id": v})() for v in self._ids]


def write_v1(path: Path, rows=ROWS, schema=V1_SCHEMA, meta=META) -> Path:
    """A table as the writer before AuditRow made it: dicts through pyarrow, meta as JSON."""
    table = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
    pq.write_table(table.replace_schema_metadata({b"avfeat.audit": json.dumps(meta).encode()}), path)
    return path


def test_a_table_written_before_audit_rows_loads_as_audit_rows(tmp_path):
    table = read_audit(write_v1(tmp_path / "audit.parquet"), FakeCache("/elsewhere", "0123456789abcdef", ["a", "b"]))
    assert table.meta == META
    a, b = table.rows
    assert a == AuditRow(video_id="a", path="/v/a.mp4", duration=8.0, correspondence=0.12, p_match=0.93, p_belongs=0.97, offset=0.0,
                         sync_confidence=0.4, p_sync=0.9, silent=False, static=False, audio_level=-23.5, visual_spread=0.21,
                         worst_windows=(WorstWindow(2.0, 4.0, -0.01), WorstWindow(0.0, 2.0, 0.03)))
    assert b.silent is None and b.p_belongs is None and b.duration is None and b.worst_windows == () and b.static is True
    assert table.p_match() == {"a": 0.93, "b": 0.08} and table.by_video()["b"] is b


def test_a_table_lacking_optional_columns_loads_with_none(tmp_path):
    schema = pa.schema([f for f in V1_SCHEMA if f.name in ("video_id", "p_match", "correspondence", "offset", "p_sync")])
    (a, b) = read_audit(write_v1(tmp_path / "old.parquet", schema=schema)).rows
    assert a.p_match == 0.93 and a.path is None and a.p_belongs is None and a.worst_windows == ()


def test_audit_rows_write_the_same_columns_types_and_values(tmp_path):
    cache = FakeCache(str(tmp_path / "cache"), "0123456789abcdef")
    rows = [AuditRow.from_row(row) for row in ROWS]
    write_audit(tmp_path / "new.parquet", rows, cache, {"heads": META["heads"]})
    written = pq.read_table(tmp_path / "new.parquet")
    assert written.schema.remove_metadata() == V1_SCHEMA
    expected = [dict(row, worst_windows=row["worst_windows"] or []) for row in ROWS]
    assert written.to_pylist() == expected
    meta = json.loads(written.schema.metadata[b"avfeat.audit"])
    assert meta == {"version": 1, "cache": {"path": str((tmp_path / "cache").resolve()), "fingerprint": "0123456789abcdef"}, "heads": META["heads"]}
    assert read_audit(tmp_path / "new.parquet", cache).rows == rows  # and back


def test_a_row_missing_a_required_column_is_refused(tmp_path):
    schema = pa.schema([f for f in V1_SCHEMA if f.name != "p_sync"])
    with pytest.raises(InputError, match="lacks the columns p_sync"):
        read_audit(write_v1(tmp_path / "a.parquet", schema=schema))
