"""Kinds of input path: plain local paths, URLs (fsspec protocols) and ``<tar>#<member>``, and the
names, suffixes and manifest paths derived from them, without reading any bytes."""

from __future__ import annotations

import os
import posixpath
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Callable
from urllib.parse import unquote, urljoin, urlsplit

URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_MEMBER = re.compile(r"^(.*\.tar)#(.+)$", re.IGNORECASE | re.DOTALL)  # the last `.tar#` splits


def protocol(path: str | os.PathLike) -> str | None:
    """The URL scheme of ``path`` (lower case), or None for a plain path."""
    match = URL_SCHEME.match(os.fspath(path))
    return match.group(1).lower() if match else None


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` (or, for a tar member, its tar) is read through fsspec."""
    return protocol(path) not in (None, "file")


def split_member(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(tar, member)`` of ``<tar>#<member>``, or None for a path that names no member."""
    match = _MEMBER.match(os.fspath(path))
    return (match.group(1), match.group(2)) if match else None


def is_plain_local(path: str | os.PathLike) -> bool:
    """A local file that is not a tar member: read exactly as before remote inputs existed."""
    return not is_remote(path) and split_member(path) is None


def name(path: str | os.PathLike) -> str:
    """The file name: the member's for a tar member, the URL path's last part for a URL."""
    text = os.fspath(path)
    member = split_member(text)
    if member is not None:
        return PurePosixPath(member[1]).name
    if is_remote(text):
        return unquote(PurePosixPath(urlsplit(text).path).name)
    return Path(text).name


def suffix(path: str | os.PathLike) -> str:
    """The lower-case extension of ``name(path)`` (a URL's query string is not part of it)."""
    return PurePosixPath(name(path)).suffix.lower()


def resolve(path: str | os.PathLike) -> str:
    """The path recorded in the manifest: a local path made absolute, a URL as given, a member
    as ``<resolved tar>#<member>``."""
    member = split_member(path)
    if member is not None:
        return f"{resolve(member[0])}#{member[1]}"
    if is_remote(path):
        return os.fspath(path)
    return str(Path(path).resolve())


def resolver() -> Callable[..., str]:
    """``resolve`` for many paths, with the same answers: each folder's real path is worked out
    once, then a file costs one lstat (to follow it if it is a link), not one per folder above it.
    ``link=False`` says the listing saw a file that is no link: then not even that lstat."""
    folders: dict[str, str] = {}  # folder as given → its real path and '/'

    def fast(path: str | os.PathLike, link: bool | None = None) -> str:
        text = path if isinstance(path, str) else os.fspath(path)
        if "//" in text or "/." in text or "#" in text or text[:1] != "/" or text[-1:] == "/":  # else plainly absolute
            if "://" in text or (".." in text and "/../" in f"/{text}/") or ("#" in text and split_member(text) is not None):
                return resolve(text)  # '..' after a link is not textual
            text = os.path.abspath(text)  # string work only: no folder is read
        folder, _, file = text.rpartition("/")
        real = folders.get(folder)
        if real is None:
            real = folders[folder] = str(Path(folder or "/").resolve()).rstrip("/") + "/"
        found = real + file
        if link is False:
            return found
        try:
            link = stat.S_ISLNK(os.lstat(found).st_mode)
        except OSError:  # missing: nothing to follow, as resolve() finds
            link = False
        return resolve(found) if link else found

    return fast


def join(base: str, entry: str) -> str:
    """``entry`` relative to the folder URL ``base`` (the URL of a list or table's folder)."""
    if protocol(base) in ("http", "https"):
        return urljoin(base.rstrip("/") + "/", entry)
    scheme, rest = base.split("://", 1)
    return f"{scheme}://{posixpath.normpath(posixpath.join(rest, entry))}"


def parent(url: str) -> str:
    """The folder URL of a file URL (its query string dropped)."""
    parts = urlsplit(url)
    return parts._replace(path=posixpath.dirname(parts.path), query="", fragment="").geturl()
