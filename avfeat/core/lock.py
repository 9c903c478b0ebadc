"""One writer at a time for an output folder: an advisory lock that names its holder and is taken
over only from a dead process, also where flock(2) or hard links are not offered (NFS, Lustre)."""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from avfeat.core.errors import InputError
from avfeat.core.io import temp_path
from avfeat.core.values import one_line

# ---- one writer at a time ------------------------------------------------------------------

LOCK_NAME = ".avfeat-lock"  # in the folder written (``OUT/.avfeat-lock``), or beside it (``OUT.avfeat-lock``)
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}  # flock(2) is not offered here
_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}  # hard links are not offered here
_RETRIES, _PAUSE = 40, 0.05  # how long a holder's record may be in transition (2 s) before it is reported as found
_held: dict[str, "WriterLock"] = {}  # lock path → this process's lock there (taken again by a nested job: counted)
_held_guard = threading.Lock()


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
