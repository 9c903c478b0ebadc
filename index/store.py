"""The index folder on disk, and the checks that tie it to its heads and its cache.

Layout (format 3)::

    INDEX/
      meta.json                 dims, counts, index types and search parameters, window and hop, the
                                cache (path, fingerprint, models) and heads (path, fingerprint) it was
                                built from, and every data file the index uses
      .avfeat-index             marker: this folder is avfeat's own (written before anything else)
      audio.<gen>.faiss         FAISS index of the audio window vectors, ids = rows of the table
      audio.<gen>.parquet       id, video_id, path, start, end (seconds on the video's timeline),
                                then the videos' metadata columns (label, split, ...; null where
                                a video has none)
      visual.<gen>.faiss        the same for visual window vectors
      visual.<gen>.parquet

``<gen>`` (8 hex digits) is unique to one write. meta.json lists each modality's files under
``modalities.<modality>``: ``"table"`` and ``"shards"``, a list of ``{"file", "begin", "end",
"bytes"}``: the rows [begin, end) of the table each FAISS file holds (under their global ids) and
its size on disk. A folder built with ``--shards N`` (N > 1) has N FAISS files per modality
(``audio-00000.<gen>.faiss``, ...; see ``avfeat.index.shards``), others one. `avfeat index
--update` appends delta files after them (``"deltas"``: how many of the last files are deltas)
and the new rows' tables as ``"table_parts"`` (the table is ``"table"`` then each part, in
order; see ``avfeat.index.update``). Folders of older
versions still load: format 1 (fixed names ``audio.faiss``, ``audio.parquet``) and format 2
(format 1's table, the shard list naming ``audio-00000.faiss``, ...).

meta.json is the single commit point, which holds on every filesystem (on NFS or Lustre only the
rename of one file is atomic): a write puts its files beside the old ones under new names, makes
them durable, replaces meta.json atomically, and only then deletes the files of older writes. A
crash at any instant leaves the old index or the new one whole. Loading checks that each FAISS
file has its recorded size, that the files, the table and meta.json agree on the counts, and,
when heads or a cache are given, that their fingerprints are the ones the index was built from.

Memory mapping (``mmap``): FAISS maps the file and reads pages on demand instead of copying the
index into memory (``IO_FLAG_MMAP_IFC``: inverted lists and flat vectors alike). An IVF search
reads only the ``nprobe`` lists it probes, so a mapped IVF index needs little resident memory;
an exhaustive (Flat) search reads every vector of every query batch, so mapping saves nothing
once searching starts. Hence the default: the IVF shards of a sharded folder are mapped on a
machine without GPUs; everything else is loaded (onto the GPUs where faiss-gpu has some).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from pathlib import Path
from typing import Any

from avfeat.core.io import fsync_dir, temp_pid, write_atomic
from avfeat.core.lock import has_entries, pid_alive
from avfeat.core.outputs import ID_KEY, claim_output
from avfeat.core.values import one_line
from avfeat.core.errors import IndexMismatchError, SearchIndexError

META_FILE = "meta.json"
META_MARKS = ("modalities", "heads")  # keys every index's meta.json holds: how a folder is known for an index
KIND = "index"  # the owner record's kind (avfeat.core.outputs)
MARKER_FILE = ".avfeat-index"  # marks a folder as avfeat's own before its first meta.json exists
FORMAT = 1  # one FAISS file per modality, fixed names
SHARDED_FORMAT = 2  # one FAISS file per shard, listed in meta.json
LISTED_FORMAT = 3  # every file listed in meta.json, named by the write that made it
FORMATS = (FORMAT, SHARDED_FORMAT, LISTED_FORMAT)
# The names of index files of one write (``<gen>``: only avfeat's writes make them) and of temp
# files: with the files the replaced meta.json listed, the only names a write ever deletes, and
# only when the new meta.json does not list them. A fixed name (audio.faiss) that no meta.json
# listed is not provably avfeat's, so it stays.
OWN_FILE = re.compile(r"^(audio|visual)(-\d{5})?\.[0-9a-f]{8}\.(faiss|parquet)$")
INDEX_NAME = re.compile(r"^(audio|visual)(-\d{5})?(\.[0-9a-f]{8})?\.(faiss|parquet)$")  # any format's
OWN_TEMP = re.compile(rf"^{re.escape(META_FILE)}\.\d+\.tmp$")
# The columns every table starts with; any after them are the videos' metadata.
TABLE_COLUMNS = ("id", "video_id", "path", "start", "end")


def _named(stem: str, generation: str | None, extension: str) -> str:
    return f"{stem}.{generation}.{extension}" if generation else f"{stem}.{extension}"


def index_file(modality: str, generation: str | None = None) -> str:
    return _named(modality, generation, "faiss")


def shard_file(modality: str, number: int, generation: str | None = None) -> str:
    return _named(f"{modality}-{number:05d}", generation, "faiss")


def table_file(modality: str, generation: str | None = None) -> str:
    return _named(modality, generation, "parquet")


def load_heads(path: str | os.PathLike, device: str = "cpu"):
    """A checkpoint written by `avfeat train-head` (``avfeat.align.checkpoint.load_checkpoint``)."""
    try:
        from avfeat.align.checkpoint import load_checkpoint
    except ImportError:
        raise SearchIndexError("this avfeat has no head checkpoints (avfeat.align.checkpoint is missing)") from None
    return load_checkpoint(path, device=device)


def _synced_size(path: Path) -> int:
    """fsync ``path`` (it must be on disk before meta.json names it); returns its size."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
        return os.fstat(handle.fileno()).st_size


def is_unfinished(out: str | os.PathLike) -> bool:
    """Whether ``out`` is an index folder whose first write crashed before its meta.json: it
    holds no index, only avfeat's own leftovers, which the next write replaces."""
    out = Path(out)
    return (out / MARKER_FILE).is_file() and not (out / META_FILE).is_file()


def _claim_folder(out: Path) -> None:
    """Make sure ``out`` is avfeat's: an index (meta.json) or marked as one; an absent or empty
    folder is created. Anything else is refused. The marker is written first (an index of an
    older version gets it too)."""
    if not ((out / META_FILE).is_file() or (out / MARKER_FILE).is_file()):
        if out.exists() and (not out.is_dir() or has_entries(out)):
            raise SearchIndexError(f"{out} exists and is not an avfeat index; choose a new --out folder")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SearchIndexError(f"cannot create {out}: {one_line(error)}") from None
    if not (out / MARKER_FILE).is_file():
        # Its existence is all it says, so it is written in place: a temp beside it, left by a
        # crash, would make the folder neither empty nor marked.
        (out / MARKER_FILE).write_text("written by `avfeat index`: this folder holds an avfeat index\n")
        fsync_dir(out)


def table_names(info: dict[str, Any]) -> list[str]:
    """A format-3 modality's table files, in row order: the table, then the parts `--update` added."""
    return [info["table"], *info.get("table_parts", [])]


def _listed(meta: dict[str, Any]) -> set[str]:
    return {name for info in meta["modalities"].values() for name in (*table_names(info), *(s["file"] for s in info["shards"]))}


def _previous_files(out: Path) -> set[str]:
    """The files the current meta.json of ``out`` names (format 1: its fixed names), read before
    a write replaces it; empty when there is none or it cannot be read."""
    try:
        meta = json.loads((out / META_FILE).read_text())
        names = {name for modality, info in meta["modalities"].items()
                 for name in (info.get("table", table_file(modality)), *info.get("table_parts", []),
                              *(s["file"] for s in info.get("shards", [{"file": index_file(modality)}])))}
        # A crash after the commit left the files the index replaced: its meta.json names them.
        names.update(meta.get("replaced", []))
        return {name for name in names if isinstance(name, str) and INDEX_NAME.match(name)}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def _remove_unlisted(out: Path, meta: dict[str, Any], previous: set[str]) -> None:
    """After the commit: delete the files of older writes (those the replaced meta.json listed
    and leftovers of interrupted writes, never a file the new meta.json lists) and temp files of
    writers that are gone. A file that cannot be deleted stays for the next write to remove: the
    new index is complete either way."""
    keep = _listed(meta)
    for entry in out.iterdir():
        name = entry.name
        stale = (name in previous or OWN_FILE.match(name)) and name not in keep
        stale_temp = OWN_TEMP.match(name) and not pid_alive(temp_pid(name) or 0)
        if (stale or stale_temp) and entry.is_file() and not entry.is_symlink():
            try:
                entry.unlink()
            except OSError:
                pass  # gone already, or no permission: harmless, it is not listed


def write_index(out: str | os.PathLike, meta: dict[str, Any], shards: dict, tables: dict) -> dict[str, Any]:
    """Write ``shards`` (per modality: FAISS indexes over contiguous ranges of rows, in order),
    ``tables`` (per modality) and ``meta`` as the index folder ``out``; returns meta.json's
    contents (``meta`` with the format and the file lists added).

    A shard may also be an entry of the current meta.json (``{"file", "begin", "end", ...}``):
    that file is kept as it is and listed again (`avfeat index --update` adds files and keeps
    the others). Both the old and the new meta.json list it, so it is never deleted. Likewise a
    table may be a list of parts, each a file name of the current index (kept) or a new table;
    parts after the first are listed as ``"table_parts"``.

    An existing index is replaced atomically (see the module docstring): the new files are
    written beside the old ones under names of this write, fsynced, and committed by replacing
    meta.json. Nothing but avfeat's own index files is ever deleted; a folder that is not an
    index (no meta.json, no marker) and not empty is refused.
    """
    import faiss
    import pyarrow.parquet as pq

    out = Path(out)
    _claim_folder(out)
    record = claim_output(out, KIND, (META_FILE, MARKER_FILE))  # an index of an older avfeat gets one too
    existing = [entry.name for entry in out.iterdir()]
    previous = _previous_files(out)  # proven avfeat's: the record's index names them
    generation = secrets.token_hex(4)
    while any(f".{generation}." in name for name in existing):  # never overwrite a file in use
        generation = secrets.token_hex(4)

    meta = json.loads(json.dumps(meta))  # a copy, to add the format and the files to
    meta["format"] = LISTED_FORMAT
    meta[ID_KEY] = record.id
    for modality, parts in shards.items():
        listed, begin = [], 0
        for number, part in enumerate(parts):
            if isinstance(part, dict):  # a file of the current index, kept
                name, count = part["file"], int(part["end"]) - int(part["begin"])
            else:
                name = index_file(modality, generation) if len(parts) == 1 else shard_file(modality, number, generation)
                faiss.write_index(part, str(out / name))
                count = part.ntotal
            listed.append({"file": name, "begin": begin, "end": begin + count, "bytes": _synced_size(out / name)})
            begin += count
        names = []
        for part in tables[modality] if isinstance(tables[modality], list) else [tables[modality]]:
            if not isinstance(part, str):  # a new table (one per modality and write)
                name = table_file(modality, generation)
                pq.write_table(part, out / name)
                _synced_size(out / name)
                part = name
            names.append(part)
        meta["modalities"][modality].update(table=names[0], shards=listed)
        meta["modalities"][modality].pop("table_parts", None)
        if names[1:]:
            meta["modalities"][modality]["table_parts"] = names[1:]
    meta["replaced"] = sorted(previous - _listed(meta))  # for a rerun to delete after a crash
    fsync_dir(out)  # the new names are on disk before meta.json names them
    write_atomic(out / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")  # the commit
    _remove_unlisted(out, meta, previous)
    return meta


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _whole(value: Any, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _modality_fields(modality: str, info: Any) -> list[tuple[str, Any, bool, str]]:
    if not isinstance(info, dict):
        return [(f"modalities.{modality}", info, False, "a JSON object")]
    fields = [(f"modalities.{modality}.count", info.get("count"), _whole(info.get("count")), "a count")]
    for key, test, what in (("factory", _text, "a FAISS factory string"), ("params", lambda v: isinstance(v, dict), "a JSON object"),
                            ("table", _text, "a file name"), ("shards", lambda v: isinstance(v, list), "a list"),
                            ("table_parts", lambda v: isinstance(v, list) and all(map(_text, v)), "a list of file names"),
                            ("deltas", lambda v: _whole(v) and v <= len(info.get("shards") or []), "a count of its shards")):
        if key in info:
            fields.append((f"modalities.{modality}.{key}", info[key], test(info[key]), what))
    for number, entry in enumerate(info.get("shards") if isinstance(info.get("shards"), list) else []):
        where = f"modalities.{modality}.shards[{number}]"
        if not isinstance(entry, dict):
            fields.append((where, entry, False, "a JSON object"))
            continue
        fields += [(f"{where}.{key}", entry.get(key), _whole(entry.get(key)), "a count") for key in ("begin", "end")]
        fields += [(f"{where}.bytes", entry["bytes"], _whole(entry["bytes"]), "a size in bytes")] if "bytes" in entry else []
    return fields


_MISSING = object()


def _get(values: Any, key: str) -> Any:
    return values.get(key, _MISSING) if isinstance(values, dict) else _MISSING


def meta_problem(meta: dict[str, Any], searchable: bool = False) -> str | None:
    """The first field of an index's meta.json whose value cannot be right (type or range), as
    ``"FIELD is VALUE, not WHAT"``; None when every one fits. A field is checked where present;
    those a search needs (window, hop, geometry, the heads' path, both modalities) must also be
    there when ``searchable``."""
    from avfeat.data.configs import AGGREGATIONS
    from avfeat.data.configs import spec_problem

    geometry, heads, cache, modalities = (_get(meta, key) for key in ("geometry", "heads", "cache", "modalities"))
    names = sorted(modalities) if isinstance(modalities, dict) else modalities
    both = ["audio", "visual"]
    fields = [  # name, value, fits, what it must be, whether a search needs it
        ("dim", meta.get("dim", _MISSING), _whole(meta.get("dim"), 1), "a positive integer", True),
        ("window", _get(meta, "window"), _positive(meta.get("window")), "a positive number of seconds", True),
        ("hop", _get(meta, "hop"), _positive(meta.get("hop")), "a positive number of seconds", True),
        ("aggregation", _get(meta, "aggregation"), meta.get("aggregation") in AGGREGATIONS, " or ".join(AGGREGATIONS), True),
        ("geometry", geometry, isinstance(geometry, dict), "a JSON object", True),
        ("videos", _get(meta, "videos"), _whole(meta.get("videos")), "a count", False),
        ("modalities", names, isinstance(names, list) and names and all(isinstance(n, str) for n in names) and set(names) <= set(both) and (names == both or not searchable),
         "audio and visual", True),
    ]
    fields += [(f"geometry.{key}", _get(geometry, key), _positive(_get(geometry, key)), "a positive rate", True) for key in ("audio_rate", "fps")]
    for section, values in (("heads", heads), ("cache", cache)):
        fields.append((section, values, isinstance(values, dict), "a JSON object", True))
        fields += [(f"{section}.{key}", _get(values, key), _text(_get(values, key)), "a string", True) for key in ("path", "fingerprint")]
    for modality, info in modalities.items() if isinstance(modalities, dict) else ():
        fields += [(*field, False) for field in _modality_fields(modality, info)]
    for name, value, fits, what, needed in fields:
        if value is _MISSING and (needed and searchable or name.endswith("fingerprint")):
            return f"{name} is missing"
        if value is not _MISSING and not fits:
            return f"{name} is {one_line(repr(value), 60)}, not {what}"
    found = spec_problem(cache) if isinstance(cache, dict) else None
    return f"cache.{found}, which does not fit its type or range" if found else None


class IndexFolder:
    """A loaded index folder: meta.json now, each modality's FAISS index and table on first use.

    ``mmap``: True maps every FAISS file, False loads them all; None (default) maps the IVF
    shards of a sharded folder when faiss has no GPU (see the module docstring).
    """

    def __init__(self, path: str | os.PathLike, mmap: bool | None = None):
        self.path = Path(path)
        self.mmap = mmap
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            raise SearchIndexError(f"{path} is not an avfeat index (no {META_FILE}); build one with `avfeat index`")
        try:
            self.meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as error:
            raise SearchIndexError(f"cannot read {meta_path}: {error}") from None
        if not isinstance(self.meta, dict) or self.meta.get("format") not in FORMATS:
            found = self.meta.get("format") if isinstance(self.meta, dict) else None
            raise SearchIndexError(f"{path} has index format {found!r}; this avfeat reads formats {', '.join(map(str, FORMATS))}")
        problem = meta_problem(self.meta)
        if problem:
            raise SearchIndexError(f"{meta_path} is damaged ({problem}); rebuild the index with `avfeat index --overwrite`")
        self._check_meta(meta_path)
        self._indexes: dict[str, Any] = {}
        self._tables: dict[str, Any] = {}

    def _check_meta(self, meta_path: Path) -> None:
        """A hand-edited or damaged meta.json is one line; every file it names must be a plain name
        inside this folder (a meta.json never makes avfeat read a file elsewhere)."""
        try:
            for modality, info in self.meta["modalities"].items():
                count = int(info["count"])
                listed = self.shards(modality)
                for name in (*self.table_names(modality), *(entry["file"] for entry in listed)):
                    if not isinstance(name, str):
                        raise TypeError(f"file name {name!r}")
                    if Path(name).name != name or name in ("", ".", ".."):
                        raise SearchIndexError(f"{meta_path} names a file {name!r} outside the index folder; rebuild the index")
                for entry in listed:
                    if not 0 <= int(entry["begin"]) <= int(entry["end"]) <= count:
                        raise SearchIndexError(f"{meta_path}: shard {entry['file']} holds rows {entry['begin']}..{entry['end']} of {count}; rebuild the index")
            for section in ("cache", "heads"):
                str(self.meta[section]["fingerprint"])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise SearchIndexError(f"{meta_path} is damaged (missing or bad {one_line(error)}); rebuild the index with `avfeat index --overwrite`") from None

    def check_searchable(self) -> None:
        """Refuse a meta.json that lacks a field searching needs (a wrong value is refused on open)."""
        problem = meta_problem(self.meta, searchable=True)
        if problem:
            raise SearchIndexError(f"{self.path / META_FILE} is damaged ({problem}); rebuild the index with `avfeat index --overwrite`")

    def count(self, modality: str) -> int:
        return int(self.meta["modalities"][modality]["count"])

    def table(self, modality: str):
        """The id → (video_id, path, start, end, metadata...) table, as a pyarrow Table whose
        row i has id i."""
        if modality not in self._tables:
            import pyarrow as pa
            import pyarrow.parquet as pq

            parts = []
            for name in self.table_names(modality):
                path = self.path / name
                try:
                    parts.append(pq.read_table(path))
                except (OSError, ValueError) as error:
                    raise SearchIndexError(f"cannot read {path}: {error}") from None
            # Parts `--update` added may lack metadata columns or add some: null where absent.
            try:
                table = parts[0] if len(parts) == 1 else pa.concat_tables(parts, promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
                raise SearchIndexError(f"the {modality} table parts of {self.path} do not fit together ({one_line(error)}); rebuild the index") from None
            if table.num_rows != self.count(modality):
                where = path if len(parts) == 1 else f"the {modality} table of {self.path}"
                raise SearchIndexError(f"{where} has {table.num_rows} rows, meta.json says {self.count(modality)}; rebuild the index")
            self._tables[modality] = table
        return self._tables[modality]

    def table_name(self, modality: str) -> str:
        """The (first) file of the modality's table (fixed before format 3)."""
        return self.table_names(modality)[0]

    def table_names(self, modality: str) -> list[str]:
        """The files of the modality's table, in row order (`--update` appends parts)."""
        if self.meta["format"] == LISTED_FORMAT:
            return table_names(self.meta["modalities"][modality])
        return [table_file(modality)]

    def shards(self, modality: str) -> list[dict[str, Any]]:
        """The modality's FAISS files with the rows they hold: ``{"file", "begin", "end"}`` (and
        ``"bytes"`` where recorded); a format-1 folder has one, holding every row."""
        info = self.meta["modalities"][modality]
        if self.meta["format"] == LISTED_FORMAT:
            return info["shards"]
        return info.get("shards") or [{"file": index_file(modality), "begin": 0, "end": self.count(modality)}]

    def faiss_index(self, modality: str):
        """The modality's FAISS index, all shards searched as one, with its tuned search
        parameters set; memory-mapped, or on the GPUs when faiss-gpu has some (see ``mmap``)."""
        if modality not in self._indexes:
            from avfeat.index.faiss_gpu import gpu_count, set_search_params
            from avfeat.index.shards import combine, place

            info = self.meta["modalities"][modality]
            listed = self.shards(modality)
            default = len(listed) > 1 and "IVF" in info["factory"] and gpu_count() == 0  # see the module docstring
            mmap = default if self.mmap is None else self.mmap
            parts, begin = [], 0
            for entry in listed:
                if entry["begin"] != begin:
                    raise SearchIndexError(f"{self.path / META_FILE} lists {modality} shards that do not cover rows {begin}.. in order; rebuild the index")
                parts.append(self.read_shard(entry, mmap))
                begin = entry["end"]
            if begin != self.count(modality):
                raise SearchIndexError(f"the {modality} shards of {self.path} hold {begin} rows, meta.json says {self.count(modality)}; rebuild the index")
            index = combine(parts) if mmap else place(parts)  # mapped shards stay on the CPU
            set_search_params(index, info.get("params", {}))
            self._indexes[modality] = index
        return self._indexes[modality]

    def read_shard(self, entry: dict[str, Any], mmap: bool = False):
        """One FAISS file of ``shards()``, checked against its entry (size, vector count); a
        CPU index, loaded (``mmap=False``: writable, as `--update` needs) or memory-mapped."""
        import faiss

        path = self.path / entry["file"]
        if not path.is_file():
            raise SearchIndexError(f"{path} is missing (meta.json lists it); rebuild the index")
        size = path.stat().st_size
        if "bytes" in entry and size != entry["bytes"]:
            raise SearchIndexError(f"{path} has {size} bytes, meta.json says {entry['bytes']} (truncated or replaced); rebuild the index")
        # IO_FLAG_MMAP_IFC maps flat vectors and inverted lists; older faiss maps inverted lists only.
        flags = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as error:
            raise SearchIndexError(f"cannot read {path}: {str(error).strip().splitlines()[0]}") from None
        expected = entry["end"] - entry["begin"]
        if index.ntotal != expected:
            raise SearchIndexError(f"{path} holds {index.ntotal} vectors, meta.json says {expected}; rebuild the index")
        if index.d != self.meta.get("dim", index.d):
            raise SearchIndexError(f"{path} holds {index.d}-dim vectors, {self.path / META_FILE} says dim {self.meta['dim']}; rebuild the index")
        return index

    def check_heads(self, checkpoint) -> None:
        built = self.meta["heads"]["fingerprint"]
        if checkpoint.fingerprint != built:
            raise IndexMismatchError(
                f"index {self.path} was built with other heads ({self.meta['heads']['path']}, fingerprint {built}), "
                f"not {checkpoint.path} (fingerprint {checkpoint.fingerprint}); rebuild it with `avfeat index` or use those heads"
            )
        embeds = checkpoint.heads.config.dim
        if embeds != self.meta["dim"]:
            raise SearchIndexError(f"{self.path / META_FILE} is damaged (dim is {self.meta['dim']}, but its heads embed {embeds}); rebuild the index with `avfeat index --overwrite`")

    def check_cache(self, cache) -> None:
        built = self.meta["cache"]["fingerprint"]
        got = cache.fingerprint()
        if got != built:
            raise IndexMismatchError(
                f"index {self.path} was built from another cache ({self.meta['cache']['path']}, fingerprint {built}), "
                f"not {cache.layout.root} (fingerprint {got}); rebuild it with `avfeat index` or pass that cache"
            )
