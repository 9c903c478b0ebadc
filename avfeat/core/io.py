"""Durable writes: unique temp names, fsync, rename; a crash leaves the old file or the new one.
Also the checks before a user-named output file is written."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from avfeat.core.errors import InputError
from avfeat.core.values import one_line

# ---- durable writes ------------------------------------------------------------------------


def temp_path(path: Path, keep_suffix: bool = False) -> Path:
    """A temp name beside ``path``, unique to this process (two writers never share one):
    ``NAME.<pid>.tmp``, or ``STEM.<pid>.tmp.SUFFIX`` with ``keep_suffix`` (for writers that pick
    the format from the suffix). A name near the file system's limit is shortened to fit."""
    if keep_suffix:
        return path.with_name(fitted_name(path.stem, path.parent, f".{os.getpid()}.tmp{path.suffix}"))
    return path.with_name(fitted_name(path.name, path.parent, f".{os.getpid()}.tmp"))


def temp_pid(path: str | os.PathLike) -> int | None:
    """The pid in a :func:`temp_path` name (``NAME.<pid>.tmp``); None for another name."""
    parts = Path(path).name.split(".")
    return int(parts[-2]) if len(parts) >= 3 and parts[-1] == "tmp" and parts[-2].isdigit() else None


# ---- file names that fit ----------------------------------------------------------------------


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name, in bytes, the file system of ``folder`` (or of its nearest
    existing ancestor) takes: 255 on Linux."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def fitted_name(name: str, folder: str | os.PathLike, suffix: str = "") -> str:
    """``name + suffix`` when it fits :func:`name_max` of ``folder``; else the start of ``name``
    (at most 200 bytes, cut between characters), "-", 16 hex digits of the SHA-1 of the whole
    ``name``, and ``suffix``: the same name always gives the same file name, two names that
    share their start give two."""
    limit = name_max(folder)
    if len(os.fsencode(name + suffix)) <= limit:
        return name + suffix
    digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:16]
    room = max(0, min(200, limit - len(os.fsencode(suffix)) - len(digest) - 1))
    head = os.fsencode(name)[:room].decode("utf-8", errors="ignore")
    return f"{head}-{digest}{suffix}"


def check_name_length(path: str | os.PathLike, option: str) -> None:
    """A user-named output whose file name the file system cannot hold is one line."""
    path = Path(path)
    size, limit = len(os.fsencode(path.name)), name_max(path.parent)
    if size > limit:
        raise InputError(f"{option} {path.name[:40]}...{path.suffix}: the file name is {size} bytes, too long for the file system (at most {limit}); choose a shorter name")


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


# ---- output files (--thumbs, --plot, attention-map --out) ----------------------------------


# The picture formats every plot and contact sheet can be written as (by the file's suffix);
# a name without a suffix is written as PNG.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
PLOT_SUFFIXES = (*IMAGE_SUFFIXES, ".pdf", ".svg")  # matplotlib's plots also as documents


def check_output_suffix(path: str | os.PathLike, option: str, suffixes: tuple[str, ...], what: str, bare: bool = False) -> None:
    """Refuse an output file whose suffix is not one of ``suffixes`` (the formats its writer
    writes; ``bare``: a name without a suffix is accepted too), before any work: bytes of one
    format under another's name mislead every reader."""
    suffix = Path(path).suffix.lower()
    if suffix in suffixes or (bare and not suffix):
        return
    listed = ", ".join(suffixes[:-1]) + f" or {suffixes[-1]}" if len(suffixes) > 1 else suffixes[0]
    raise InputError(f"{option} {path} must name a {listed} file ({what})")


def prepare_output_file(path: str | os.PathLike, option: str, suffixes: tuple[str, ...] = (), what: str = "", bare: bool = False) -> Path:
    """Make an output file's place ready before the work that fills it: missing parent folders
    are created (as ``--out`` folders are); a path that is a folder, or under a file, or in a
    folder avfeat may not write, or a file name too long for the file system, or (with
    ``suffixes``) a suffix of a format it is not written in (:func:`check_output_suffix`), is one
    line naming ``option`` and the path."""
    path = Path(path)
    check_name_length(path, option)
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name such as {path / 'out.png'}")
    if suffixes:
        check_output_suffix(path, option, suffixes, what, bare)
    # The nearest existing ancestor must be a folder: "notes.txt/map.png" cannot be made.
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"cannot write {option} {path}: {ancestor} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot write {option} {path}: cannot create {path.parent}: {one_line(error)}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {option} {path}: permission denied in {path.parent}")
    return path


def write_output_file(path: str | os.PathLike, data: bytes) -> None:
    """:func:`write_atomic` for a user-named output file: its parent folders are created, and
    an OS error (a folder in the way, permission, a full disk) is one line naming the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    except OSError as error:
        raise InputError(f"cannot write {path}: {one_line(error)}") from None
