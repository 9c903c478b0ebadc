"""The one rule for an existing ``--out`` folder: new, resumed or overwritten, and only when it
is avfeat's own output of the same kind.

Ownership is proven by two files that must agree: the owner record ``avfeat-output.json``
(kind, a random id, the avfeat version, the top-level names avfeat writes there), written only
by avfeat, and the stage's primary file (cache.json, config.json, meta.json, the demo marker),
which carries the same id as ``output_id``. A look-alike primary file of another tool has no
record; a copied record has no matching primary file."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Iterable

from avfeat.core.errors import InputError, disk_full
from avfeat.core.lock import LOCK_NAME
from avfeat.core.values import one_line

OWNER_FILE = "avfeat-output.json"
ID_KEY = "output_id"  # the owner record's id, as the primary file records it

# ---- the owner record ----------------------------------------------------------------------


@dataclass(frozen=True)
class OwnerRecord:
    """``avfeat-output.json``: which avfeat output a folder holds and what avfeat wrote there."""

    kind: str
    id: str
    version: str
    names: tuple[str, ...]

    @classmethod
    def new(cls, kind: str, names: Iterable[str]) -> "OwnerRecord":
        from avfeat import __version__

        return cls(kind=kind, id=secrets.token_hex(16), version=__version__, names=tuple(sorted({*names, OWNER_FILE})))

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "names": list(self.names)}, indent=2, sort_keys=True) + "\n"


def read_owner(folder: str | os.PathLike) -> OwnerRecord | None:
    """The owner record of ``folder``; None when it has none.

    Raises:
        InputError: the record exists but is not one avfeat wrote (damaged or edited).
    """
    path = Path(folder) / OWNER_FILE
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
        record = OwnerRecord(kind=values["kind"], id=values["id"], version=values["version"], names=tuple(values["names"]))
        if not all(isinstance(v, str) and v for v in (record.kind, record.id)) or not all(isinstance(n, str) for n in record.names):
            raise ValueError("wrong types")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path} is damaged ({one_line(error)[:80]}); remove the folder yourself or choose another --out") from None
    return record


def claim_output(folder: str | os.PathLike, kind: str, names: Iterable[str]) -> OwnerRecord:
    """The owner record of ``folder`` for an output of ``kind`` whose writer is about to write
    its primary file: the existing one, or a new one written durably (the folder is created).

    Raises:
        InputError: the folder's record is of another kind or damaged.
    """
    from avfeat.core.io import fsync_dir, write_atomic

    folder = Path(folder)
    record = read_owner(folder)
    if record is not None:
        if record.kind != kind:
            raise InputError(f"{folder} holds an avfeat {record.kind}, not a {kind}; choose another --out")
        return record
    record = OwnerRecord.new(kind, names)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / OWNER_FILE, record.to_json())
        fsync_dir(folder)
    except OSError as error:
        if disk_full(error):  # the CLI's full-disk line: free space, run the same command again
            raise
        raise InputError(f"cannot write {folder / OWNER_FILE}: {one_line(error)}") from None
    return record


def stamped(folder: str | os.PathLike, kind: str, names: Iterable[str], values: dict) -> dict:
    """``values`` (a primary file's JSON object) with the id of ``folder``'s owner record,
    claimed with :func:`claim_output`."""
    return {**values, ID_KEY: claim_output(folder, kind, names).id}


def _primary_id(path: Path) -> str | None:
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return values.get(ID_KEY) if isinstance(values, dict) else None


def _adopt(out: Path, marker: str, kind: str, own: Iterable[str]) -> None:
    """Make an output of an older avfeat (valid primary file, no record) provably avfeat's: the
    record is written and the primary file gets its id; nothing else changes."""
    from avfeat.core.io import write_atomic

    values = json.loads((out / marker).read_text())
    record = claim_output(out, kind, own)
    write_atomic(out / marker, json.dumps({**values, ID_KEY: record.id}, indent=2, sort_keys=True) + "\n")


def holds_output(folder: Path) -> bool:
    """Whether ``folder`` holds anything but lock files and an owner record (a writer stopped
    between the record and its primary file left nothing to protect)."""
    return any(entry.name != OWNER_FILE and not entry.name.startswith(LOCK_NAME) for entry in folder.iterdir())


# ---- output folders ------------------------------------------------------------------------


class OutputMode(str, Enum):
    """What a command does with its ``--out`` folder (see :func:`prepare_output`)."""

    NEW = "new"  # absent or empty: created
    RESUME = "resume"  # avfeat's own output of the same kind, continued
    OVERWRITE = "overwrite"  # avfeat's own output of the same kind, its own files replaced


def prepare_output(
    out: str | os.PathLike,
    *,
    marker: str,
    kind: str,
    resume: bool = False,
    overwrite: bool = False,
    can_resume: bool = True,
    own: Iterable[str] = (),
    create: bool = True,
    marker_keys: Iterable[str] = (),
) -> OutputMode:
    """The one rule for an existing output folder, shared by every command.

    A missing or empty folder is created (also with ``--resume``: a job rerun until it is done
    can pass it from the start). An existing one is refused unless ``--resume`` or
    ``--overwrite`` is given, and either is accepted only when the folder holds avfeat's own
    output of this ``kind``: its owner record and its ``marker`` (primary file, a JSON object
    holding ``marker_keys``) carry the same id. ``--resume`` adopts an output of an older avfeat
    (no record, no id) by writing both; ``--overwrite`` refuses it. ``--overwrite`` deletes only
    the names both listed in ``own`` and recorded as written by avfeat; the caller writes the new
    output afterwards. With ``create=False`` a missing folder is left for the caller to make.

    Raises:
        InputError: the folder cannot be used; the message says which flag would help.
    """
    import shutil

    out = Path(out)
    if resume and overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if resume and not can_resume:
        raise InputError(f"this command cannot resume a {kind}; pass --overwrite to replace {out}")
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    if out.is_dir() and holds_output(out):  # lock files and a lone owner record do not count
        _check_owned(out, marker, kind, resume, overwrite, can_resume, own, marker_keys)
        if resume:
            return OutputMode.RESUME
        record = read_owner(out)
        for name in set(own) & set(record.names) - {OWNER_FILE}:  # only what avfeat recorded writing
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        return OutputMode.OVERWRITE
    if create:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"cannot create {out}: {one_line(error)}") from None
    return OutputMode.NEW


# ---- inputs and outputs apart --------------------------------------------------------------


def refuse_inside(out: str | os.PathLike, inputs: Iterable[tuple[str | os.PathLike | None, str]], option: str = "--out") -> None:
    """Refuse an output that lies inside one of a command's input folders, or contains one:
    writing (or ``--overwrite``) there would change what the command reads.

    ``inputs`` are ``(path, what)`` pairs; a path that is None or not a local folder or file
    (a URL) is skipped.

    Raises:
        InputError: one line naming the option, the output and the input.
    """
    target = Path(out).resolve()
    for source, what in inputs:
        if source is None or "://" in str(source) or not Path(source).exists():
            continue
        place = Path(source).resolve()
        if target == place or (place.is_dir() and target.is_relative_to(place)):
            raise InputError(f"{option} {out} lies inside the {what} {source}, which this command reads; choose a path outside it")
        if place.is_relative_to(target):
            raise InputError(f"{option} {out} contains the {what} {source}, which this command reads; choose another {option}")


def _check_owned(out: Path, marker: str, kind: str, resume: bool, overwrite: bool, can_resume: bool, own: Iterable[str],
                 marker_keys: Iterable[str]) -> None:
    """Refuse a non-empty ``out`` that --resume or --overwrite may not touch (see
    :func:`prepare_output`); adopt an output of an older avfeat on --resume."""
    if not (out / marker).is_file():
        raise InputError(f"output {out} is a non-empty folder that is not an avfeat {kind} (no {marker}); choose another --out")
    if marker_keys and not _marker_holds(out / marker, marker_keys):
        raise InputError(f"output {out} is not an avfeat {kind} (its {marker} was not written by avfeat, or is damaged); choose another --out")
    if not (resume or overwrite):
        hint = "--resume to continue it or --overwrite to replace it" if can_resume else "--overwrite to replace it"
        raise InputError(f"output {out} already holds an avfeat {kind}; pass {hint}")
    record, primary_id = read_owner(out), _primary_id(out / marker)
    if record is None and primary_id is None:  # an output of an older avfeat, or a look-alike
        if resume:
            _adopt(out, marker, kind, own)  # resuming deletes nothing
            return
        raise InputError(f"output {out} has no {OWNER_FILE}, so avfeat cannot prove it wrote it (an older avfeat's {kind}, or another tool's "
                         f"{marker}) and --overwrite deletes nothing there; remove the folder yourself or choose another --out")
    if record is None:
        raise InputError(f"output {out} lacks its {OWNER_FILE} (its {marker} names one); remove the folder yourself or choose another --out")
    if record.kind != kind:
        raise InputError(f"output {out} holds an avfeat {record.kind}, not a {kind}; choose another --out")
    if record.id != primary_id:
        raise InputError(f"output {out}: its {marker} and its {OWNER_FILE} belong to different outputs (copied files?); "
                         "remove the folder yourself or choose another --out")


def _marker_holds(path: Path, keys: Iterable[str]) -> bool:
    """Whether the marker file is a JSON object holding every one of ``keys``."""
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(values, dict) and all(key in values for key in keys)
