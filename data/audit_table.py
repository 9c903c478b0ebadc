"""The audit table (``audit.parquet``, written by ``avfeat audit``; read by ``train-head
--exclude`` / ``--weight-by`` and by ``avfeat audit --fix-dir``): one :class:`AuditRow` per video
of a cache with tokens.

- ``video_id``, ``path``, ``duration``;
- ``correspondence`` and ``p_match``: the calibrated probability that the sound, as it is
  timed, belongs to these pictures (a shifted track counts as not belonging: its ``offset``
  says by how much);
- ``p_belongs``: the calibrated probability that the sound belongs to these pictures at its
  best lag (the curve's peak less its median, calibrated the same way): high for a shifted
  track, low for another video's;
- ``offset`` (seconds, positive = audio late), ``sync_confidence`` (the curve's peak margin)
  and ``p_sync``: the probability that ``offset`` is within one step of the truth;
- ``silent`` (the decoded sound's RMS below the audit's floor; null when the cache did not
  record the level), ``static`` (the frames' tokens do not change), with ``audio_level`` and
  ``visual_spread``;
- ``worst_windows``: the heads' windows whose frames fit their sound least at lag 0.

The table's schema metadata (``avfeat.audit``) records the cache's and the heads' fingerprints,
so a table is only ever applied to the cache it describes. How the columns are measured and
calibrated: ``avfeat.index.audit``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from avfeat.core.errors import InputError

AUDIT_META_KEY = b"avfeat.audit"
AUDIT_VERSION = 1
# The columns a table must have to be used at all (the others may be missing in a table written
# by hand or by an older avfeat: they read as None).
REQUIRED_COLUMNS = ("video_id", "p_match", "correspondence", "offset", "p_sync")


@dataclass(frozen=True)
class WorstWindow:
    """One of the heads' windows and its frames' mean lag-0 score (low: the sound fits least)."""

    start: float
    end: float
    score: float

    def to_row(self) -> dict[str, float]:
        return {"start": self.start, "end": self.end, "score": self.score}


@dataclass(frozen=True, kw_only=True)
class AuditRow:
    """One video's row of the audit table (see the module docstring for what each field means).
    Rows meet Parquet only through :meth:`from_row` and :meth:`to_row`."""

    video_id: str
    correspondence: float
    p_match: float
    offset: float
    p_sync: float
    path: str | None = None
    duration: float | None = None
    p_belongs: float | None = None
    sync_confidence: float | None = None
    silent: bool | None = None  # None: the cache did not record the sound's level
    static: bool | None = None
    audio_level: float | None = None
    visual_spread: float | None = None
    worst_windows: tuple[WorstWindow, ...] = field(default=())

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "AuditRow":
        """A row as Parquet (``to_pylist``) gives it; a missing or null column reads as None
        (``worst_windows``: none), and columns the table does not define are left out."""
        names = {f.name for f in fields(cls)}
        values = {name: value for name, value in row.items() if name in names}
        values["worst_windows"] = tuple(WorstWindow(w["start"], w["end"], w["score"]) for w in row.get("worst_windows") or ())
        for name in REQUIRED_COLUMNS:
            values.setdefault(name, None)
        return cls(**values)

    def to_row(self) -> dict[str, Any]:
        """The row as Parquet takes it: every column of :func:`audit_schema`, in its order."""
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["worst_windows"] = [w.to_row() for w in self.worst_windows]
        return {name: row[name] for name in audit_schema().names}


@dataclass
class AuditTable:
    """An audit table read back and checked against a cache: what training and repair use."""

    path: Path
    meta: dict
    rows: list[AuditRow]

    def by_video(self) -> dict[str, AuditRow]:
        return {row.video_id: row for row in self.rows}

    def p_match(self) -> dict[str, float]:
        """Every audited video's probability that its sound belongs to its pictures."""
        return {row.video_id: float(row.p_match) for row in self.rows}


def audit_schema():
    """The table's Parquet schema: the column names and types every avfeat since version 1 of the
    table writes."""
    import pyarrow as pa

    window = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("score", pa.float64())])
    return pa.schema([
        ("video_id", pa.string()), ("path", pa.string()), ("duration", pa.float64()),
        ("correspondence", pa.float64()), ("p_match", pa.float64()), ("p_belongs", pa.float64()),
        ("offset", pa.float64()), ("sync_confidence", pa.float64()), ("p_sync", pa.float64()),
        ("silent", pa.bool_()), ("static", pa.bool_()), ("audio_level", pa.float64()), ("visual_spread", pa.float64()),
        ("worst_windows", pa.list_(window)),
    ])


def read_audit(path: str | Path, cache=None) -> AuditTable:
    """Read an audit table; with ``cache``, check that it was made from that very cache (its
    fingerprint) and covers every video of it with tokens. Each problem is one line."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputError(f"audit table {path} does not exist (write one with `avfeat audit CACHE --heads HEADS --out {path.name}`)")
    try:
        table = pq.read_table(path)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise InputError(f"audit table {path} cannot be read as Parquet ({str(error).splitlines()[0]})") from None
    raw = (table.schema.metadata or {}).get(AUDIT_META_KEY)
    if raw is None:
        raise InputError(f"{path} is not an audit table written by `avfeat audit` (no avfeat.audit metadata)")
    meta = json.loads(raw)
    missing_columns = set(REQUIRED_COLUMNS) - set(table.column_names)
    if missing_columns:
        raise InputError(f"audit table {path} lacks the columns {', '.join(sorted(missing_columns))}")
    rows = table.to_pylist()
    broken = [row["video_id"] for row in rows if not (isinstance(row["p_match"], float) and 0.0 <= row["p_match"] <= 1.0)]
    if broken:
        raise InputError(f"audit table {path} is damaged: {len(broken)} rows have no p_match in [0, 1] (e.g. {broken[0]}); run `avfeat audit` again")
    if cache is not None:
        fingerprint = cache.fingerprint()
        if meta["cache"]["fingerprint"] != fingerprint:
            raise InputError(
                f"audit table {path} describes another cache ({meta['cache']['path']}, fingerprint {meta['cache']['fingerprint']}), "
                f"not {cache.layout.root} as it is now (fingerprint {fingerprint}); run `avfeat audit` on this cache"
            )
        audited = {row["video_id"] for row in rows}
        lacking = [r.video_id for r in cache.records(status="ok") if r.video_id not in audited]
        if lacking:
            raise InputError(f"audit table {path} lacks {len(lacking)} videos of the cache (e.g. {lacking[0]}); run `avfeat audit` again")
    return AuditTable(path, meta, [AuditRow.from_row(row) for row in rows])


def write_audit(path: str | Path, rows: list[AuditRow], cache, meta: dict | None = None) -> None:
    """Write an audit table for ``cache`` atomically; ``meta`` adds to the recorded metadata
    (heads, calibration). A row's None fields are written as null."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from avfeat.core.io import write_atomic

    record = {"version": AUDIT_VERSION, "cache": {"path": str(Path(cache.layout.root).resolve()), "fingerprint": cache.fingerprint()}, **(meta or {})}
    table = pa.Table.from_pylist([row.to_row() for row in rows], schema=audit_schema())
    table = table.replace_schema_metadata({AUDIT_META_KEY: json.dumps(record).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_atomic(path, buffer.getvalue())
