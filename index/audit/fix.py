"""Repair: remux the videos the audit finds out of sync, with their audio moved back by the
estimated offset (``avfeat audit --fix-dir``)."""

from __future__ import annotations

from pathlib import Path

from avfeat.core.errors import InputError
from avfeat.core.io import fitted_name
from avfeat.data.audit_table import AuditRow
from avfeat.index.audit.calibration import SYNC_STEP


def fix_plan(rows: list[AuditRow], out_dir: Path, min_confidence: float) -> tuple[list[tuple[AuditRow, Path]], list[str]]:
    """Which videos ``--fix-dir`` remuxes, where to, and why the others that are off are not.

    A video is fixed when its offset is off by more than half a step and ``p_sync`` reaches
    ``min_confidence`` (``p_sync`` already holds whether the sound belongs to the pictures at
    some lag: shifting a foreign soundtrack repairs nothing). Segments and remote files are
    left with a note: a remux rewrites a whole local file. A file is named after its video's id,
    shortened with a hash where the id is too long for a file name (with a note)."""
    plan, notes = [], []
    names: dict[str, str] = {}
    for row in rows:
        if not (abs(row.offset) > SYNC_STEP / 2 and row.p_sync >= min_confidence):
            continue
        source = Path(row.path)
        if "://" in row.path or "#" in row.path or not source.is_file():
            notes.append(f"{row.video_id}: {row.path} is not a local file; not fixed")
            continue
        target = out_dir / fitted_name(row.video_id, out_dir, source.suffix)
        if target.name != f"{row.video_id}{source.suffix}":
            notes.append(f"{row.video_id}: the id is too long for a file name; fixed as {target.name}")
        if str(target) in names:
            notes.append(f"{row.video_id}: a segment of {row.path}, which {names[str(target)]} also fixes; not fixed")
            continue
        names[str(target)] = row.video_id
        plan.append((row, target))
    return plan, notes


def fix_videos(rows: list[AuditRow], fix_dir: Path, min_confidence: float, overwrite: bool) -> tuple[int, list[str]]:
    """Remux each video that :func:`fix_plan` picks into ``fix_dir`` with its audio shifted back;
    (how many, the notes on those left unfixed). Files already there are replaced only with
    ``overwrite``."""
    from avfeat.index.sync import remux_shifted

    plan, notes = fix_plan(rows, fix_dir, min_confidence)
    existing = [target for _, target in plan if target.exists()]
    folders = [target for target in existing if target.is_dir() and not target.is_symlink()]
    if folders:  # every target is checked before the first is written: nothing half done
        raise InputError(f"--fix-dir {fix_dir}: {folders[0].name} is a folder where a fixed video would go; move it or choose another folder")
    if existing and not overwrite:
        raise InputError(f"--fix-dir {fix_dir} already holds {len(existing)} of the {len(plan)} files to write (e.g. {existing[0].name}); add --overwrite or choose another folder")
    fix_dir.mkdir(parents=True, exist_ok=True)
    for row, target in plan:
        remux_shifted(row.path, target, row.offset)
    return len(plan), notes
