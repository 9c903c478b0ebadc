"""What INPUT names, item by item: ``MediaInput`` (a file or a segment of one, with the user's
id and columns), the file kinds told by extension, and where the entries of a list file or
table point (a URL as given, ``file://`` as its local path, a relative path from the file's folder)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from avfeat.core.errors import InputError
from avfeat.extract import sources
from avfeat.extract.sources import Stat

MEDIA_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .wmv .mpg .mpeg .ts .mts .m2ts .3gp .ogv .vob".split()
)
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
TABLE_EXTENSIONS = frozenset({".csv", ".parquet", ".jsonl"})
SHARD_SUFFIX = ".tar"
UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class MediaInput:
    """One input named by INPUT: a media file or a segment of one and, from an input table, the
    user's id and the row's other columns."""

    # A local Path; a URL or a tar member (`<tar>#<member>`) stays a str, as Path("s3://b/k")
    # would become "s3:/b/k".
    path: str | Path
    user_id: str | None = None
    start: float | None = None  # seconds on the file's timeline; None: from its beginning
    end: float | None = None  # None: to its end
    metadata: dict = field(default_factory=dict, compare=False, hash=False)
    # Size and mtime when the listing already said (a tar's headers, an S3 listing): spares a
    # request per input in `assign_ids` and the job.
    stat: Stat | None = field(default=None, compare=False, hash=False)
    # (status, message) when the listing found the input unusable (a shard without media).
    problem: tuple[str, str] | None = field(default=None, compare=False, hash=False)
    # False when the listing saw a local file that is no link: spares an lstat per input when
    # a resume of a million files resolves their paths (None: not known).
    link: bool | None = field(default=None, compare=False, hash=False)

    @property
    def is_segment(self) -> bool:
        return self.start is not None or self.end is not None

    def segment_suffix(self) -> str:
        """What a segment adds to its file's id: ``_30-40`` (seconds), ``_30-end``."""
        if not self.is_segment:
            return ""
        return f"_{self.start or 0:g}-{'end' if self.end is None else format(self.end, 'g')}"


def folder_of(path: str | Path) -> str | Path:
    """The folder that relative entries of a list file or table are taken from."""
    return sources.parent(path) if sources.is_remote(path) else path.parent


def read_remote(url: str) -> bytes:
    """A list file or table given as a URL, whole, or one InputError line."""
    try:
        return sources.read_bytes(url)
    except OSError as error:
        raise InputError(f"cannot read {url}: {' '.join(str(error).split())}") from None


def relative_to(base: str | Path, entry: str) -> str | Path:
    """An entry of a list file or table: a URL as given (``file://`` as its local path), a
    relative path taken from ``base``, the folder (or folder URL) of that file."""
    if sources.protocol(entry) == "file":
        return local_path(entry)
    if sources.is_remote(entry):
        return entry
    candidate = Path(entry).expanduser()
    if candidate.is_absolute():
        return candidate
    return sources.join(base, entry) if isinstance(base, str) else base / candidate


def local_path(url: str) -> Path:
    """The local path a ``file://`` URL names (a ``#member`` after a tar is kept)."""
    parts = urlsplit(url)
    return Path(unquote(parts.path) + (f"#{parts.fragment}" if parts.fragment else ""))
