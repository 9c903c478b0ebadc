"""WebDataset shards as inputs: the samples of a tar (per KEY a media member, ``KEY.json`` and
maybe ``KEY.txt``), their ids and metadata, read from the tar's headers and small members only."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from avfeat.core.errors import InputError
from avfeat.data.records import Status
from avfeat.extract import sources
from avfeat.extract.inputs.ids import MAX_ID_LENGTH, check_id
from avfeat.extract.inputs.items import MEDIA_EXTENSIONS, UNSAFE_ID_CHARS, MediaInput
from avfeat.extract.sources import Stat

def _sample_key(name: str) -> str:
    """A WebDataset sample's key: the member name up to the first dot of its file name."""
    folder, _, base = name.removeprefix("./").rpartition("/")
    return f"{folder}/{base.split('.', 1)[0]}" if folder else base.split(".", 1)[0]


def _key_id(key: str) -> str:
    """A sample's id: its key, with the characters ids may not hold replaced by '_'."""
    vid = UNSAFE_ID_CHARS.sub("_", key).strip("_")
    return vid if vid.strip(".") else "sample"


def from_shard(tar: str | Path, many: bool) -> list[MediaInput]:
    """The samples of a WebDataset shard as video2dataset writes them: per KEY a media member
    (``KEY.mp4`` or another media extension), ``KEY.json`` (its fields become the video's
    metadata) and maybe ``KEY.txt`` (kept as the field ``txt``). A sample's path is
    ``<tar>#<member>`` and its id is its KEY. Only the tar's headers and small members are read.

    A shard that cannot be read, is truncated (no end-of-archive marker: its last samples are
    lost) or holds no media member is one InputError line when it is the INPUT itself; as a piece of a pattern (``many``) it is recorded as one failed input, so one
    bad shard of a thousand does not stop the job.
    """
    try:
        members, texts = sources.scan_tar(tar, keep=lambda name: name.lower().endswith((".json", ".txt")))
    except (OSError, tarfile.TarError) as error:
        if isinstance(error, tarfile.TarError) and not isinstance(error, sources.TruncatedTar):
            message = f"{tar} is not a readable tar file ({' '.join(str(error).split())})"
        else:
            message = " ".join(str(error).split())
        if not many:
            raise InputError(message) from None
        status = sources.status_of(error) if isinstance(error, OSError) else Status.TRUNCATED if isinstance(error, sources.TruncatedTar) else Status.UNREADABLE
        return [MediaInput(tar, problem=(status, message))]
    samples: dict[str, MediaInput] = {}
    for member in members:
        key = _sample_key(member.name)
        slot = key if key.rpartition("/")[2] else member.name  # each keyless member is a failed sample of its own
        if slot in samples or _media_suffix(member.name) not in MEDIA_EXTENSIONS:
            continue  # a sample's first media member is its video
        samples[slot] = _sample(tar, member, key, texts)
    if not samples:
        message = f"{tar} holds no media samples (KEY.mp4 + KEY.json, as video2dataset writes; media extensions: {' '.join(sorted(MEDIA_EXTENSIONS))})"
        if not many:
            raise InputError(message)
        return [MediaInput(tar, problem=(Status.NO_MEDIA, message))]
    return list(samples.values())


def _media_suffix(name: str) -> str:
    """A member's extension; a file name that is only an extension (``.mp4``, an empty key) has one too."""
    base = name.rpartition("/")[2].lower()
    return Path(base).suffix or (base if base.startswith(".") else "")


def _sample(tar: str | Path, member, key: str, texts: dict[str, bytes]) -> MediaInput:
    """One sample; an empty key, a key no id can hold or a ``KEY.json`` that is not a JSON
    object makes it a failed input (``bad_sample``), never a silent drop."""
    path, stat = f"{tar}#{member.name}", Stat(member.size, member.mtime)
    json_bytes = _find_text(texts, member.name, key, ".json")
    problem = None
    if not key.rpartition("/")[2]:
        problem = f"{path}: the sample's key is empty (a member named only by its extension)"
    else:
        try:
            check_id(_key_id(key), f"{path}: the sample's key")
        except InputError as error:
            problem = str(error)
    if problem is None and json_bytes is not None:
        try:
            value = json.loads(json_bytes)
        except (ValueError, RecursionError) as error:
            value = error
        if not isinstance(value, dict):
            what = f"is not valid JSON ({' '.join(str(value).split())[:200]})" if isinstance(value, Exception) else f"holds a {type(value).__name__}, not an object"
            problem = f"{path}: its {key.rpartition('/')[2]}.json {what}"
    if problem is not None:
        return MediaInput(path, None if not key.rpartition("/")[2] else _key_id(key)[:MAX_ID_LENGTH], stat=stat, problem=(Status.BAD_SAMPLE, problem))
    return MediaInput(path, _key_id(key), metadata=_sample_metadata(json_bytes, _find_text(texts, member.name, key, ".txt")), stat=stat)


def _find_text(texts: dict[str, bytes], media: str, key: str, suffix: str) -> bytes | None:
    """The bytes of the sample's ``KEY<suffix>`` member, named as the media member is."""
    folder = media.rpartition("/")[0]
    base = key.rpartition("/")[2]
    return texts.get(f"{folder}/{base}{suffix}" if folder else f"{base}{suffix}")


def _sample_metadata(json_bytes: bytes | None, txt: bytes | None) -> dict:
    """A sample's metadata: the JSON object's fields, flat (nested values as given). A field
    named like a manifest column (``status``, ``width``, ...) is kept as ``json_<name>``."""
    from avfeat.data.records import RESERVED_COLUMNS

    fields = json.loads(json_bytes) if json_bytes is not None else {}  # an object: _sample checked it
    if txt is not None and "txt" not in fields:
        fields["txt"] = txt.decode("utf-8", errors="replace")
    return {f"json_{name}" if name in RESERVED_COLUMNS else name: _without_empty(value) for name, value in fields.items()}


def _without_empty(value):
    """Empty objects become None: Parquet cannot store a struct without fields."""
    if isinstance(value, dict):
        value = {k: _without_empty(v) for k, v in value.items()}
        return value or None
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value


def same_types(rows: list[dict]) -> None:
    """Make each metadata field one type across the samples (in place): a field whose values
    have none in common (a number here, text there) is kept as JSON text, so that the manifest
    parts of one run can be read together."""
    import pyarrow as pa

    for name in dict.fromkeys(key for row in rows for key in row):
        try:
            pa.array([row.get(name) for row in rows])
        except (pa.ArrowException, TypeError, ValueError):
            for row in rows:
                if row.get(name) is not None:
                    row[name] = json.dumps(row[name], sort_keys=True)
