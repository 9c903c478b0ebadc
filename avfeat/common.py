"""Small helpers every stage shares: devices, sizes, durable writes, one-line error text, the
rule for an existing output folder and its one-writer-at-a-time lock.

Each idea has one home here so that every command behaves the same way: a bad ``--device`` is
the same one-line error everywhere, ``--memory-limit`` and ``--memory-budget`` read sizes with
one syntax, and every file avfeat replaces is written with one guarantee.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import socket
import sys
import threading
import time
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


def temp_pid(path: str | os.PathLike) -> int | None:
    """The pid in a :func:`temp_path` name (``NAME.<pid>.tmp``); None for another name."""
    parts = Path(path).name.split(".")
    return int(parts[-2]) if len(parts) >= 3 and parts[-1] == "tmp" and parts[-2].isdigit() else None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host (and pid namespace) runs; a zombie does not."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    stat = _process_stat(pid)
    return stat is None or stat[0] not in ("Z", "X")  # a zombie has exited: its files (and flocks) are closed


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


def prepare_output_file(path: str | os.PathLike, option: str) -> Path:
    """Make an output file's place ready before the work that fills it: missing parent folders
    are created (as ``--out`` folders are); a path that is a folder, or under a file, or in a
    folder avfeat may not write, is one line naming ``option`` and the path."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name such as {path / 'out.png'}")
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


# ---- error text ----------------------------------------------------------------------------


def did_you_mean(name: str, known, otherwise: str) -> str:
    """The hint an unknown id's error ends with: the closest known ids, or where to list them."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else f"; {otherwise}"


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


# ---- one writer at a time ------------------------------------------------------------------

LOCK_NAME = ".avfeat-lock"  # in the folder written (``OUT/.avfeat-lock``), or beside it (``OUT.avfeat-lock``)
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}  # flock(2) is not offered here
_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}  # hard links are not offered here
_RETRIES, _PAUSE = 40, 0.05  # how long a holder's record may be in transition (2 s) before it is reported as found
_held: dict[str, "WriterLock"] = {}  # lock path → this process's lock there (taken again by a nested job: counted)
_held_guard = threading.Lock()


def has_entries(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds anything but avfeat's lock files (a writer's lock lives inside
    the folder it writes, so a folder holding only that is still empty for the output rule)."""
    return any(not entry.name.startswith(LOCK_NAME) for entry in Path(folder).iterdir())


def _read_proc(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _process_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time in clock ticks since boot)`` of a process (Linux), or None."""
    stat = _read_proc(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name in parentheses may hold spaces
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _command() -> str:
    """``avfeat extract`` for ``python -m avfeat extract ...``: the program and its subcommand."""
    argv = sys.argv or [""]
    program = Path(argv[0]).name or "python"
    if program == "__main__.py":
        program = Path(argv[0]).parent.name
    words = [arg for arg in argv[1:] if not arg.startswith("-")][:1]
    return " ".join([program, *words])


def _holder_state(holder: dict) -> str:
    """``"alive"``, ``"dead"`` (a process of this host that is gone), or ``"elsewhere"`` (another
    host, or another pid namespace of this one, whose processes cannot be checked from here)."""
    if holder.get("host") != socket.gethostname():
        return "elsewhere"
    namespace = _pid_namespace()
    if holder.get("pid_namespace") and namespace and holder["pid_namespace"] != namespace:
        return "elsewhere"
    pid = holder.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return "dead"
    stat = _process_stat(pid)
    if stat is not None and holder.get("process_start") is not None and stat[1] != holder["process_start"]:
        return "dead"  # the pid was reused by another process
    return "alive"


def _read_record(path: Path) -> dict | None:
    """The holder record at ``path``; None when it is missing; ``{}`` when it cannot be read as
    one (being written where records are created in place, or damaged)."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


class WriterLock:
    """The advisory lock of one output folder (see :func:`writer_lock`)."""

    def __init__(self, folder: str | os.PathLike, kind: str, beside: bool = False):
        self.folder, self.kind = Path(folder), kind
        self.home = self.folder.parent if beside else self.folder
        name = f"{self.folder.name}{LOCK_NAME}" if beside else LOCK_NAME
        self.path, self.record_path = self.home / name, self.home / f"{name}.json"
        self._fd: int | None = None
        self._owner: WriterLock | None = None
        self._depth, self._key, self._record, self._made_home = 0, "", {}, False

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def holder(self) -> dict | None:
        """The record of the process that holds the lock (None when nobody holds it)."""
        return _read_record(self.record_path) or None

    # ---- taking and giving back --------------------------------------------------------

    def acquire(self) -> "WriterLock":
        """Take the lock (or count it again where this process holds it already).

        Raises:
            InputError: another process holds it (the message names it), or it cannot be made.
        """
        if self._owner is not None:
            raise RuntimeError(f"the lock of {self.folder} is taken already by this object")
        if self.home.exists() and not self.home.is_dir():
            raise InputError(f"output {self.home} exists and is not a folder")
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"output {self.folder} exists and is not a folder")
        self._make_home()
        key = os.path.realpath(self.path)
        with _held_guard:
            owner = _held.get(key)
            if owner is None:
                try:
                    self._lock()
                except OSError as error:
                    raise InputError(f"cannot lock {self.folder} ({self.path}): {one_line(error)}") from None
                owner, self._key = self, key
                _held[key] = self
            owner._depth += 1
            self._owner = owner
        return self

    def release(self) -> None:
        """Give the lock back (the last release of a nested one removes the lock files)."""
        owner, self._owner = self._owner, None
        if owner is None:
            return
        with _held_guard:
            owner._depth -= 1
            if owner._depth == 0:
                del _held[owner._key]
                owner._unlock()

    def _make_home(self) -> None:
        if not self.home.is_dir():
            try:
                self.home.mkdir(parents=True)
                self._made_home = True
            except FileExistsError:
                pass
            except OSError as error:
                raise InputError(f"cannot create {self.home}: {one_line(error)}") from None

    def _lock(self) -> None:
        fd = self._flock()
        try:
            self._claim(mine={
                "host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": _command(), "kind": self.kind, "folder": str(self.folder.absolute()),
                "process_start": (_process_stat(os.getpid()) or (None, None))[1], "pid_namespace": _pid_namespace(),
            })
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        self._fd = fd

    def _unlock(self) -> None:
        try:
            if _read_record(self.record_path) == self._record:
                self.record_path.unlink(missing_ok=True)
            # Removed while still locked: a process that opened it meanwhile finds, once it has
            # the flock, that the path no longer names its file, and starts over (see _flock).
            self.path.unlink(missing_ok=True)
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        if self._made_home:
            try:
                self.home.rmdir()  # made only for the lock and left empty (e.g. the command failed)
            except OSError:
                pass

    def _flock(self) -> int | None:
        """An open descriptor of the lock file holding its flock; None where flock is not offered."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not a POSIX system
            return None
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
            except FileNotFoundError:  # the folder was removed meanwhile by a releasing holder that made it
                self._make_home()
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refusal(busy=True) from None
            except OSError as error:
                os.close(fd)
                if error.errno in _NO_FLOCK:
                    return None
                raise
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                return fd
            os.close(fd)  # its holder released and removed it between our open and flock: again
        raise InputError(f"cannot lock {self.folder}: {self.path} keeps being replaced")

    def _claim(self, mine: dict) -> None:
        """Create the holder record exclusively; replace it only when it names a dead process of
        this host."""
        unreadable = 0
        for _ in range(100):
            if self._create_record(mine):
                self._record = mine
                return
            holder = _read_record(self.record_path)
            if holder is None:
                continue  # given back or being taken over meanwhile
            if not holder:
                unreadable += 1
                if unreadable < _RETRIES:
                    time.sleep(_PAUSE)  # created in place (no hard links here) and still being written
                    continue
                raise InputError(
                    f"{self.kind} {self.folder} has an unreadable lock record {self.record_path}; "
                    "if no avfeat process writes there, delete it and run again"
                )
            state = _holder_state(holder)
            if state != "dead":
                raise self._refusal(holder, state)
            self._take_over(holder)
        raise InputError(f"cannot lock {self.folder}: {self.record_path} keeps being replaced")

    def _create_record(self, record: dict) -> bool:
        """Create the record file whole and exclusively: written to a temp, then hard-linked to
        its name (link fails on an existing name, atomically, NFS included); where hard links are
        not offered, an ``O_EXCL`` create. False when a record exists."""
        data = json.dumps(record, indent=2) + "\n"
        tmp = temp_path(self.record_path)
        try:
            with open(tmp, "w") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, self.record_path)
                return True
            except FileExistsError:
                return os.stat(tmp).st_nlink == 2  # NFS: a retried link whose first try succeeded
            except OSError as error:
                if error.errno not in _NO_LINK:
                    raise
            try:
                fd = os.open(self.record_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over(self, stale: dict) -> None:
        """Remove the record of a dead holder. It is renamed aside first and checked: if what was
        moved is not that record (another process took it over between our read and the rename),
        it is put back."""
        aside = self.record_path.with_name(f"{self.record_path.name}.{os.getpid()}.stale")
        try:
            os.rename(self.record_path, aside)
        except FileNotFoundError:
            return
        try:
            if _read_record(aside) != stale:
                try:
                    os.link(aside, self.record_path)
                except OSError:
                    pass
        finally:
            aside.unlink(missing_ok=True)

    def _refusal(self, holder: dict | None = None, state: str = "alive", busy: bool = False) -> InputError:
        """The one line for a second writer. With ``busy`` (the flock is held) the holder's record
        is read again for a moment while it is missing or names a dead process: the holder may be
        writing it, or replacing a stale one."""
        if busy:
            for _ in range(_RETRIES):
                holder = _read_record(self.record_path)
                state = _holder_state(holder) if holder else "missing"
                if state in ("alive", "elsewhere"):
                    break
                time.sleep(_PAUSE)
        what = f"{self.kind} {self.folder}"
        if not holder:
            return InputError(f"{what} is being written by another process (it holds {self.path}); wait for it or stop it")
        who = f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('started')} ({holder.get('command')})"
        if state == "dead":  # busy, but its recorded holder is gone: a process it started keeps the lock file open
            return InputError(f"{what} is locked by {who}, which has exited, but {self.path} is still held open, probably by a process it started; stop that process")
        if state == "elsewhere" and not busy:
            return InputError(
                f"{what} is being written by {who}; wait for it or stop it. A lock of another host (or container) is never "
                f"taken over automatically: if that process is gone, delete {self.record_path} and run again"
            )
        return InputError(f"{what} is being written by {who}; wait for it or stop it")


def writer_lock(folder: str | os.PathLike, kind: str, *, beside: bool = False) -> WriterLock:
    """The lock that makes one process at a time the writer of an output ``folder``; use it as
    ``with writer_lock(out, "cache"):`` around everything that writes there (``--overwrite``'s
    removals included). ``kind`` names the output in messages.

    Two files make the lock, in the folder (``.avfeat-lock``, ``.avfeat-lock.json``) or, with
    ``beside``, next to it (``OUT.avfeat-lock``, ``OUT.avfeat-lock.json``) for a folder that is
    replaced by a rename. Both are removed when the lock is given back.

    * ``flock(2)`` on ``.avfeat-lock`` is the lock proper. It does not depend on HDF5's own file
      locking (often off on NFS and Lustre), works across hosts where the filesystem supports
      it (NFSv4, NFSv3 with lockd, Lustre mounted with ``flock``), and the kernel releases it
      when its holder dies, however it dies.
    * ``.avfeat-lock.json`` names the holder (host, pid, start time, command) for the message a
      second writer gets. It is created whole and exclusively (a hard link of a finished temp,
      or an ``O_EXCL`` create), so it is also the lock where flock is missing (``ENOLCK``) or
      works on one host only (NFS mounted ``nolock``, Lustre ``localflock``): two hosts cannot
      both create it.
    * A holder record left behind (kill -9, a crash) is replaced only when it names a process
      of this host that is gone (no such pid, a zombie, or a pid reused since: the process's
      start time is recorded too). One of another host, or of another pid namespace, is never
      replaced automatically: it cannot be checked from here, and the message says how to
      remove it. Where flock works, replacing is serialised by it. Without flock the stale
      record is renamed aside and checked before it is deleted, which leaves two processes
      replacing one stale record in the same instant only a tiny window to both win.

    The lock is re-entrant within a process (a command and the job it runs may both take it).
    Its descriptor is not passed to programs the holder starts; a forked child (a DataLoader
    worker) shares the flock until it exits, which the message of a refusal says when the
    recorded holder is gone. Raises :class:`InputError` (one line) on entering when another
    process holds it.
    """
    return WriterLock(folder, kind, beside=beside)
