"""Where the bytes of an input come from: local files, fsspec URLs and members of tar files.

Every read of an input's bytes goes through this package, so the rest of extract handles three
kinds of path the same way:

- a local path (``Path`` or ``str``): read with the builtin ``open`` and ``os.stat``, exactly as
  before remote inputs existed;
- a URL (``s3://``, ``gs://``, ``http(s)://``, any fsspec protocol): read through fsspec with
  range requests, never copied whole to disk (``remote``);
- ``<tar path or URL>#<member name>``: one member of an uncompressed tar (a WebDataset shard),
  read as a window over the tar's bytes (``tars``, ``files.Slice``).

``file://`` URLs are not handled here: ``extract.inputs`` turns them into the local paths they name.

Errors of every kind of path are raised as ``OSError`` subclasses (``FileNotFoundError``,
``PermissionError``, ``TimeoutError``, else ``OSError``) with the library's own error as the
cause, so callers that already catch ``OSError`` for local files need nothing else;
``status_of`` turns one into the manifest status it stands for.

Modules, bottom up: ``paths`` (kinds of path, names), ``remote`` (fsspec, timeouts, error
statuses), ``files`` (seekable files and windows), ``tars`` (tar indexes), ``access`` (stat, open,
compare any input). This package's namespace is their public API.
"""

from avfeat.extract.sources.access import exists, open_bytes, read_bytes, same_bytes, stat
from avfeat.extract.sources.files import BLOCK_SIZE, HEADER_BLOCK, Slice, open_local
from avfeat.extract.sources.paths import is_plain_local, is_remote, join, name, parent, protocol, resolve, resolver, split_member, suffix
from avfeat.extract.sources.remote import (
    DEFAULT_TIMEOUT,
    TIMEOUT_ENV,
    Stat,
    as_os_error,
    check_protocol,
    describe,
    filesystem,
    list_files,
    remote_timeout,
    status_of,
)
from avfeat.extract.sources.tars import Member, TruncatedTar, scan_tar, tar_index

__all__ = [
    "BLOCK_SIZE", "DEFAULT_TIMEOUT", "HEADER_BLOCK", "TIMEOUT_ENV", "Member", "Slice", "Stat", "as_os_error",
    "check_protocol", "describe", "exists", "filesystem", "is_plain_local", "is_remote", "join", "list_files",
    "name", "open_bytes", "open_local", "parent", "protocol", "read_bytes", "remote_timeout", "resolve", "resolver",
    "same_bytes", "scan_tar", "split_member", "stat", "status_of", "suffix", "tar_index", "TruncatedTar",
]
