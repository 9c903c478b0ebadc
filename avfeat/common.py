"""Small helpers every stage shares: devices, sizes, durable writes, one-line error text and the
rule for an existing output folder.

Each idea has one home here so that every command behaves the same way: a bad ``--device`` is
the same one-line error everywhere, ``--memory-limit`` and ``--memory-budget`` read sizes with
one syntax, and every file avfeat replaces is written with one guarantee.
"""

from __future__ import annotations

import math
import os
import re
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from avfeat.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch


# ---- devices -------------------------------------------------------------------------------


def resolve_device(name: str) -> "torch.device":
    """``auto`` → the first CUDA GPU when there is one, else the CPU; any other name is checked.

    Raises:
        InputError: the name is not a device, or names a CUDA device this machine lacks.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: no CUDA GPU is available (use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: there are only {torch.cuda.device_count()} GPUs")
    elif device.type not in ("cpu", "mps"):
        raise InputError(f"--device {name}: avfeat runs on cpu or cuda")
    return device


# ---- sizes ---------------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(?P<number>[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(?P<unit>[kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str | int) -> int:
    """``"8GB"``, ``"512M"``, ``"1.5g"``, ``"2GiB"``, ``"1e9"``, ``"0"`` → bytes.

    Units are binary multiples (K = 1024) and case-insensitive; a plain number is bytes.

    Raises:
        InputError: not a finite, non-negative size.
    """
    match = _SIZE_RE.match(str(text))
    value = float(match["number"]) * _SIZE_UNITS[match["unit"].lower()] if match else math.nan
    if not math.isfinite(value) or value < 0:
        raise InputError(f"cannot read the size {text!r} (examples: 8GB, 512MB, 1.5G, 1e9, 0)")
    return int(value)


def human_bytes(count: float) -> str:
    """``1536`` → ``"1.5 KB"`` (binary multiples)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1024:
            return f"{int(count)} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"


# ---- numbers -------------------------------------------------------------------------------


def check_number(name: str, value: float | None, *, minimum: float = 0.0, inclusive: bool = False, maximum: float | None = None) -> None:
    """Refuse NaN, infinities and values out of range with one line naming the option: NaN
    compares false with everything, so a plain ``value <= 0`` check lets it through.

    Raises:
        InputError: ``value`` is not finite, not above ``minimum`` (or equal, with
            ``inclusive``), or above ``maximum``.
    """
    if value is None:
        return
    low_ok = value >= minimum if inclusive else value > minimum
    if not (math.isfinite(value) and low_ok and (maximum is None or value <= maximum)):
        bound = f"at least {minimum:g}" if inclusive else f"greater than {minimum:g}"
        upper = f" and at most {maximum:g}" if maximum is not None else ""
        raise InputError(f"{name} must be a finite number {bound}{upper} (got {value})")


# ---- times ---------------------------------------------------------------------------------

_TIME_RE = re.compile(r"^(?:(?:(?P<h>\d+):)?(?P<m>\d+):)?(?P<s>\d+(?:\.\d*)?|\.\d+)$")


def parse_time(text: str | float) -> float:
    """``"90"``, ``"1:30"``, ``"1:02:03.5"`` → seconds (finite, non-negative).

    Raises:
        InputError: not a time of that form.
    """
    match = _TIME_RE.match(str(text).strip())
    # Below the leading field, minutes and seconds stay under 60 ("1:75" is a typo, not 2:15).
    minutes_ok = match is not None and (match["h"] is None or int(match["m"]) < 60)
    seconds_ok = match is not None and (match["m"] is None or float(match["s"]) < 60)
    if not (minutes_ok and seconds_ok):
        raise InputError(f"cannot read the time {text!r} (seconds, m:ss or h:mm:ss, e.g. 75.5, 1:15.5, 0:01:15)")
    return int(match["h"] or 0) * 3600 + int(match["m"] or 0) * 60 + float(match["s"])


# ---- durable writes ------------------------------------------------------------------------


def temp_path(path: Path) -> Path:
    """A temp name beside ``path``, unique to this process (two writers never share one)."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, final: Path) -> None:
    """Make the finished file ``tmp`` the file ``final``: fsync it, rename it over ``final``,
    fsync the folder. A crash at any instant leaves the old file or the new one, never neither."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` with :func:`replace_durably`'s guarantee."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---- error text ----------------------------------------------------------------------------


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """The first line of an error's message (or its type's name), whitespace collapsed, cut
    at ``limit`` characters: what a one-line CLI error may quote of a library's exception."""
    if isinstance(error, BaseException):
        text = str(getattr(error, "strerror", None) or error).strip() or type(error).__name__
    else:
        text = str(error).strip()
    line = " ".join((text.splitlines() or [""])[0].split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


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
) -> OutputMode:
    """The one rule for an existing output folder, shared by every command.

    A missing or empty folder is created (also with ``--resume``: a job rerun until it is done
    can pass it from the start). An existing one is refused unless ``--resume`` or
    ``--overwrite`` is given, and either is accepted only when the folder holds avfeat's own
    output of this ``kind`` (recognised by its ``marker`` file): nothing else is ever touched.
    ``--overwrite`` deletes only the names listed in ``own`` (files or folders); the caller
    writes the new output afterwards. With ``create=False`` a missing folder is left for the
    caller to make (one that writes a temp folder and renames it into place).

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
    if out.is_dir() and any(out.iterdir()):
        if not (out / marker).is_file():
            raise InputError(f"output {out} is a non-empty folder that is not an avfeat {kind} (no {marker}); choose another --out")
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
