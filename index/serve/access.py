"""Who may ask `avfeat serve` what: the Host names it answers to, the Origin of a request, its
token and the size of its body. Standard library only (the command reads these before FastAPI
is imported).

A loopback server answers only to loopback names, so a web page cannot reach it by pointing a
name of its own at 127.0.0.1 (DNS rebinding). Whatever the names, a request whose Origin header
names another site than its Host is refused: a page elsewhere cannot post to the service.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import urllib.parse
from dataclasses import dataclass
from typing import Iterable, Optional

from avfeat.core.errors import InputError

DEFAULT_MAX_UPLOAD = "200MB"
TOKEN_COOKIE = "avfeat_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # change nothing: another site's page may ask them


class UploadTooLarge(InputError):
    """A request body is larger than ``--max-upload``."""


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused before it reaches the app: HTTP status, one line, error kind."""

    status: int
    message: str
    kind: str


def host_name(header: str) -> str:
    """The name in a Host header (``name``, ``name:port``, ``[v6]:port``), lower case."""
    try:
        return (urllib.parse.urlsplit("//" + header).hostname or "").lower()
    except ValueError:
        return ""


def is_loopback(host: str) -> bool:
    """Whether a listening address only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def served_hosts(host: str, extra: Iterable[str] = ()) -> list[str] | None:
    """The Host names a server listening on ``host`` answers to: on loopback, the loopback names
    (and ``extra``); elsewhere any (None), unless ``extra`` names them."""
    if is_loopback(host):
        return [*LOOPBACK_NAMES, host, *extra]
    return [host, *extra] if extra else None


def misdirected(headers: dict[str, str], allowed: Optional[set[str]]) -> Optional[Refusal]:
    """421 when the Host header names a server this one is not (``allowed``: None takes any)."""
    host = headers.get("host", "")
    if allowed is not None and host_name(host) not in allowed:
        return Refusal(421, f"this server does not answer to the host {host!r} (serve --allow-host adds a name)", "MisdirectedRequest")
    return None


def cross_site(headers: dict[str, str], method: str = "GET") -> Optional[Refusal]:
    """403 when the request comes from a page of another site than the Host it asks: by its
    Origin, or (for a request that posts) by the browser's Sec-Fetch-Site, which a page cannot
    forge; ``same-origin`` and ``none`` (typed, curl, scripts) pass."""
    origin = headers.get("origin")
    if origin is not None and urllib.parse.urlsplit(origin).netloc != headers.get("host", ""):
        return Refusal(403, f"requests from another site ({origin}) are refused", "CrossSiteRequest")
    fetch_site = headers.get("sec-fetch-site", "").strip().lower()
    if method.upper() not in SAFE_METHODS and fetch_site in ("cross-site", "same-site"):
        return Refusal(403, f"{method.upper()} requests from another site (Sec-Fetch-Site: {fetch_site}) are refused", "CrossSiteRequest")
    return None


def authorised(token: Optional[str], headers: dict[str, str], query: str) -> bool:
    """Whether a request carries ``token`` (None: none needed): ``Authorization: Bearer``, the
    cookie that ``/?token=`` sets, or ``?token=``."""
    if token is None:
        return True
    offered = [headers.get("authorization", "").removeprefix("Bearer ").strip()]
    offered += urllib.parse.parse_qs(query).get("token", [])
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == TOKEN_COOKIE:
            offered.append(urllib.parse.unquote(value))
    return any(item and secrets.compare_digest(item.encode(), token.encode()) for item in offered)


def unauthorised(token: Optional[str], headers: dict[str, str], path: str, query: str) -> Optional[Refusal]:
    """401 for a request without the token; ``/health`` and the page's static assets need none."""
    if path != "/health" and not path.startswith("/static/") and not authorised(token, headers, query):
        return Refusal(401, "this server needs its token: Authorization: Bearer TOKEN, or open /?token=TOKEN once", "Unauthorized")
    return None


def oversize(headers: dict[str, str], limit: int) -> Optional[Refusal]:
    """413 for a body whose Content-Length is over ``limit`` bytes (one without is counted as it arrives)."""
    length = headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        return Refusal(413, f"the request body ({length} bytes) is larger than the server's limit of {limit} bytes (--max-upload)", "UploadTooLarge")
    return None


def refusal(headers: dict[str, str], path: str, query: str, allowed: Optional[set[str]], token: Optional[str], limit: int,
            method: str = "GET") -> Optional[Refusal]:
    """The first reason to refuse a request, in order: Host, Origin, token, size; None to let it in."""
    return (misdirected(headers, allowed) or cross_site(headers, method) or unauthorised(token, headers, path, query)
            or oversize(headers, limit))


_SECRETS = re.compile(r"(?i)(\btoken=|\bauthorization:\s*(?:bearer\s+)?|\bbearer\s+|avfeat_token=)[^\s&;\"',]+")


def redact(text: str) -> str:
    """``text`` with tokens hidden: ``?token=``, Authorization, Bearer and the token cookie."""
    return _SECRETS.sub(lambda match: match.group(1) + "***", text)


class RedactTokens(logging.Filter):
    """A log filter that hides tokens in every record (the access log shows each request's
    query string, ``?token=`` included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Each argument on its own: uvicorn's access formatter reads the arguments by position.
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: redact(arg) if isinstance(arg, str) else arg for key, arg in record.args.items()}
        return True
