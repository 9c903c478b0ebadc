"""Reading what people type (sizes, times, bounded numbers) and writing what they read (sizes,
one-line errors, the "did you mean" hint), one syntax for every command."""

from __future__ import annotations

import math
import re

from avfeat.core.errors import InputError

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


def seconds_from_env(name: str, default: float) -> float:
    """A positive, finite number of seconds from the environment variable ``name`` (``default``
    when it is unset or blank)."""
    import os

    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise InputError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


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
