"""WebDataset shards as inputs: the samples of a tar (per KEY a media member, ``KEY.json`` and
maybe ``KEY.txt``), their ids and metadata, read from the tar's headers and small members only."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from avfeat.core.errors import InputError
from avfeat.data.records import Status
from avfeat.extract import sources
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
        if key in samples or Path(member.name).suffix.lower() not in MEDIA_EXTENSIONS:
            continue  # a sample's first media member is its video
        metadata = _sample_metadata(_find_text(texts, member.name, key, ".json"), _find_text(texts, member.name, key, ".txt"))
        samples[key] = MediaInput(f"{tar}#{member.name}", _key_id(key), metadata=metadata, stat=Stat(member.size, member.mtime))
    if not samples:
        message = f"{tar} holds no media samples (KEY.mp4 + KEY.json, as video2dataset writes; media extensions: {' '.join(sorted(MEDIA_EXTENSIONS))})"
        if not many:
            raise InputError(message)
        return [MediaInput(tar, problem=(Status.NO_MEDIA, message))]
    return list(samples.values())


def _find_text(texts: dict[str, bytes], media: str, key: str, suffix: str) -> bytes | None:
    """The bytes of the sample's ``KEY<suffix>`` member, named as the media member is."""
    folder = media.rpartition("/")[0]
    base = key.rpartition("/")[2]
    return texts.get(f"{folder}/{base}{suffix}" if folder else f"{base}{suffix}")


def _sample_metadata(json_bytes: bytes | None, txt: bytes | None) -> dict:
    """A sample's metadata: the JSON object's fields, flat (nested values as given). A field
    named like a manifest column (``status``, ``width``, ...) is kept as ``json_<name>``."""
    from avfeat.data.records import RESERVED_COLUMNS

    fields = {}
    if json_bytes is not None:
        try:
            value = json.loads(json_bytes)
        except ValueError:
            value = None  # a damaged .json: the video is still extracted, without metadata
        fields = value if isinstance(value, dict) else {} if value is None else {"json": value}
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
