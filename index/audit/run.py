"""`avfeat audit` as one library call: :func:`run_audit` audits a cache (or reuses its table for a
repair), writes the table and the report, then fixes what is out of sync."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from avfeat.core.errors import InputError
from avfeat.data.audit_table import AuditRow, AuditTable, read_audit, write_audit
from avfeat.index.audit.fix import fix_videos
from avfeat.index.audit.measure import audit_cache
from avfeat.index.audit.report import counts, write_report


@dataclass
class AuditRun:
    """What `avfeat audit` did: the table's rows (audited now or reused), where they went, and
    the repair."""

    out: Path
    report: Path | None  # the HTML report written (None: none)
    rows: list[AuditRow]
    reused: bool = False  # an existing table of this cache and these heads, used as it is (--fix-dir)
    skipped: list[str] = field(default_factory=list)  # videos shorter than one window: no row
    notes: list[str] = field(default_factory=list)  # out-of-sync videos left unfixed, and why
    fixed: int | None = None  # videos remuxed into the fix folder (None: no fix asked for)

    def counts(self) -> dict[str, int]:
        """Videos likely mismatched, out of sync (both at p ≥ 0.5), silent and static."""
        return counts(self.rows)


def run_audit(
    cache: str | Path,
    heads: str | Path,
    out: Path,
    report: Path | None = None,
    worst: int = 20,
    windows: int = 3,
    max_offset: float = 2.0,
    fix_dir: Path | None = None,
    min_confidence: float = 0.9,
    seed: int = 0,
    overwrite: bool = False,
    device: str = "auto",
    progress=None,
    on_audited: Callable[[AuditRun], None] | None = None,
) -> AuditRun:
    """Audit ``cache`` with ``heads`` into the table ``out`` and the HTML ``report`` (None: OUT
    with .html; a path named ``none``: no report), then, with ``fix_dir``, remux the videos out
    of sync by more than half a step at ``p_sync`` ≥ ``min_confidence`` into it.

    With ``fix_dir``, an existing ``out`` table of this cache and these heads is used as it is
    (no new audit, nothing written but the fixes); any other existing table needs ``overwrite``.

    Args:
        progress: as for :func:`audit_cache`.
        on_audited: called with the run once a new table (and report) is written, before any fix.
    """
    from avfeat.core.devices import resolve_device
    from avfeat.core.io import prepare_output_file
    from avfeat.core.outputs import refuse_inside
    from avfeat.core.values import check_number
    from avfeat.data.cache import Cache
    from avfeat.index.store import load_heads

    check_number("--max-offset", max_offset)
    check_number("--min-confidence", min_confidence, inclusive=True, maximum=1.0)
    out = Path(out)
    report = None if report is not None and str(report) == "none" else Path(report or out.with_suffix(".html"))
    inputs = ((cache, "cache"), (heads, "heads"))
    for path, option in ((out, "--out"), (report, "--report"), (fix_dir, "--fix-dir")):
        if path is not None:
            refuse_inside(path, inputs, option)  # a write there would change what the audit reads
    prepare_output_file(out, "--out", (".parquet",), "the audit table is Parquet")
    if report is not None:
        prepare_output_file(report, "--report", (".html", ".htm"), "the report is an HTML page")
    checkpoint = load_heads(heads, device=str(resolve_device(device)))
    with Cache(cache) as store:
        checkpoint.check_cache(store)
        table = _reusable_table(out, store, checkpoint, fix_dir, overwrite)
        if fix_dir is not None and fix_dir.exists() and not fix_dir.is_dir():
            raise InputError(f"--fix-dir {fix_dir} is a file, not a folder")
        if table is not None:
            run = AuditRun(out, report, table.rows, reused=True)
        else:
            result = audit_cache(store, checkpoint, max_offset=max_offset, worst=windows, seed=seed, progress=progress)
            write_audit(out, result.rows, store, result.meta)
            meta = read_audit(out).meta
            run = AuditRun(out, report, result.rows, skipped=result.skipped)
    if not run.reused:
        if report is not None:
            write_report(report, run.rows, meta, worst)
        if on_audited is not None:
            on_audited(run)
    if fix_dir is not None:
        run.fixed, run.notes = fix_videos(run.rows, fix_dir, min_confidence, overwrite)
    return run


def _reusable_table(out: Path, cache, checkpoint, fix_dir: Path | None, overwrite: bool) -> AuditTable | None:
    """The existing ``out`` table that a fix uses as it is, or None when a new audit replaces
    (or creates) it; an existing table is replaced only with ``overwrite``."""
    if not out.exists() or overwrite:
        return None
    table = read_audit(out, cache) if fix_dir is not None else None
    if table is None or table.meta.get("heads", {}).get("fingerprint") != checkpoint.fingerprint:
        raise InputError(f"--out {out} exists; add --overwrite to replace it" + (" (it is not this cache's and these heads' audit, so --fix-dir cannot reuse it)" if fix_dir is not None else ""))
    return table
