"""The one rule for an existing ``--out`` folder: new, resumed or overwritten, and only when it
is avfeat's own output of the same kind."""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Iterable

from avfeat.core.errors import InputError
from avfeat.core.lock import has_entries
from avfeat.core.values import one_line

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
    output of this ``kind`` (recognised by its ``marker`` file): nothing else is ever touched.
    ``--overwrite`` deletes only the names listed in ``own`` (files or folders); the caller
    writes the new output afterwards. With ``create=False`` a missing folder is left for the
    caller to make (one that writes a temp folder and renames it into place). With
    ``marker_keys`` the marker must be a JSON object holding those keys: a ``config.json`` or
    ``meta.json`` of another tool (a model folder, an experiment) is not taken for avfeat's.

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
    if out.is_dir() and has_entries(out):  # the writer's own lock files do not count
        if not (out / marker).is_file():
            raise InputError(f"output {out} is a non-empty folder that is not an avfeat {kind} (no {marker}); choose another --out")
        if marker_keys and not _marker_holds(out / marker, marker_keys):
            raise InputError(f"output {out} is not an avfeat {kind} (its {marker} was not written by avfeat, or is damaged); choose another --out")
        if resume:
            return OutputMode.RESUME
        if not overwrite:
            hint = "--resume to continue it or --overwrite to replace it" if can_resume else "--overwrite to replace it"
            raise InputError(f"output {out} already holds an avfeat {kind}; pass {hint}")
        for name in own:
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


def _marker_holds(path: Path, keys: Iterable[str]) -> bool:
    """Whether the marker file is a JSON object holding every one of ``keys``."""
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(values, dict) and all(key in values for key in keys)
