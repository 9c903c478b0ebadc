"""Opening a media container for decoding (a local file, a URL or a tar member, through
``extract.sources``) with each failure as a ``MediaError`` status, picking its audio and video
streams, and the common timeline its times are measured on."""

from __future__ import annotations

import contextlib
import os
import stat
from fractions import Fraction

import av

from avfeat.data.records import Status
from avfeat.extract import sources
from avfeat.extract.media.spec import MediaError

def one_line(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def pick_stream(container, kind: str):
    """The default/best stream of ``kind``, ignoring cover art (attached pictures)."""
    cover = getattr(getattr(av.stream, "Disposition", None), "attached_pic", None)  # PyAV >= 13
    streams = [
        s
        for s in (container.streams.video if kind == "video" else container.streams.audio)
        if not (kind == "video" and cover is not None and s.disposition & cover)
    ]
    if not streams:
        return None
    best = container.streams.best(kind)
    return best if any(best is s for s in streams) else streams[0]


def timeline_origin(container, astream, vstream) -> Fraction:
    """Timeline zero: the container's start time, else the earliest stream start."""
    if container.start_time is not None:
        return Fraction(container.start_time, av.time_base)
    starts = [
        s.start_time * s.time_base for s in (astream, vstream) if s.start_time is not None and s.time_base is not None
    ]
    return min(starts) if starts else Fraction(0)


def _av_open(target):
    """PyAV's container of a path or a file object; what it cannot open is ``unreadable``."""
    try:
        return av.open(target, metadata_errors="ignore")
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(Status.UNREADABLE, f"not a readable media file: {one_line(exc)}") from None


@contextlib.contextmanager
def open_checked(path: str):
    """Open a media container, or raise MediaError (missing, empty, unreadable; for URLs and tar
    members also the status of a failed read, such as ``access_denied`` or ``remote_timeout``).

    A local file is opened by path. A URL or a tar member is opened as a file object from
    ``extract.sources.open_bytes``: PyAV reads it through range requests (or a window over the tar's
    bytes), and nothing is copied to disk.
    """
    if sources.is_plain_local(path):
        try:
            status = os.stat(path)
        except OSError as exc:
            raise MediaError(Status.UNREADABLE, f"cannot read file: {one_line(exc)}") from None
        if not stat.S_ISREG(status.st_mode):  # a FIFO would block the open until some writer came
            raise MediaError(Status.UNREADABLE, "not a regular file (a FIFO, socket or device)")
        size = status.st_size
        if size == 0:
            raise MediaError(Status.EMPTY_FILE, "file is empty (0 bytes)")
        with _av_open(path) as container:
            yield container
        return
    try:
        size = sources.stat(path).size
        source = sources.open_bytes(path) if size else None
    except OSError as exc:
        raise MediaError(sources.status_of(exc), one_line(exc)) from None  # says what it could not read
    if not size:
        raise MediaError(Status.EMPTY_FILE, "file is empty (0 bytes)")
    try:
        with _av_open(source) as container:
            yield container
        if source.error is not None:  # PyAV dropped a failed read and stopped early
            raise MediaError(Status.DECODE_ERROR, f"reading failed: {one_line(source.error)}")
    except MediaError:
        # PyAV saw a failed read as corrupt or unreadable data; say what really happened.
        if source.error is not None and sources.is_remote(path):
            raise MediaError(sources.status_of(source.error), one_line(source.error)) from None
        raise
    finally:
        source.close()
