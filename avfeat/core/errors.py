"""Errors a user can cause.

Every error that bad input can trigger is an :class:`AvfeatError`; the CLI prints it as one
line on stderr and exits non-zero, so users never see a traceback for their own mistakes.
"""


class AvfeatError(Exception):
    """Base class for user-facing errors (printed as one line by the CLI)."""


class InputError(AvfeatError):
    """A path, file list or option the user gave cannot be used."""


class CacheError(AvfeatError):
    """A token cache is missing, incomplete, or does not match the requested config."""


class ModelError(AvfeatError):
    """A model spec cannot be resolved or loaded."""


class CheckpointError(AvfeatError):
    """A heads checkpoint is missing, incomplete, or does not match the cache or options."""


class BackboneMismatchError(AvfeatError):
    """Heads, an index or a query come from other backbones (models, layers, dims) than a cache."""


class TrainingDiverged(AvfeatError):
    """Training produced a non-finite loss or weight; the last good checkpoint is kept."""


class SearchIndexError(AvfeatError):
    """An index folder is missing, incomplete or unreadable."""


class IndexMismatchError(SearchIndexError):
    """An index was built with other heads or from another cache than the ones given."""


class QueryError(InputError):
    """A search or sync query (a file, an image, ``VIDEO_ID@START-END``) cannot be used."""


_FULL = (28, 122)  # ENOSPC, EDQUOT
_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "errno = 28", "errno = 122")


def disk_full(error: BaseException) -> str | None:
    """The file system's words when ``error`` (or what caused it) is a full disk or quota,
    else None. HDF5 and pyarrow report it as RuntimeError or OSError text with the errno in it."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL:
            return f"{error.strerror}" + (f": {error.filename}" if error.filename else "")
        text = str(error)
        if any(word in text for word in _FULL_WORDS):
            return "Disk quota exceeded" if "quota" in text or "122" in text else "No space left on device"
        error = error.__cause__ or error.__context__
    return None
