"""The index folder on disk, and the checks that tie it to its heads and its cache.

Layout::

    INDEX/
      meta.json        dims, counts, index types and search parameters, window and hop, the
                       cache (path, fingerprint, models) and heads (path, fingerprint) it was built from
      audio.faiss      FAISS index of the audio window vectors, ids = rows of audio.parquet
      audio.parquet    id, video_id, path, start, end (seconds on the video's timeline)
      visual.faiss     the same for visual window vectors
      visual.parquet

A folder built with ``--shards N`` (N > 1; meta.json ``"format": 2``) holds N FAISS files per
modality instead of one (``audio-00000.faiss``, ``audio-00001.faiss``, ...), each listed in
meta.json under ``modalities.<modality>.shards`` as ``{"file", "begin", "end", "bytes"}``: the
rows [begin, end) of the table it holds (under their global ids) and its size on disk (see
``avfeat.index.shards``). Unsharded folders keep format 1 and read as one shard.

The folder is written whole as ``INDEX.tmp`` (meta.json last) and renamed into place, so a
crash leaves either the previous index or the new one, never a mix. Loading checks that each
FAISS file has its recorded size, that the files, the table and meta.json agree on the counts,
and, when heads or a cache are given, that their fingerprints are the ones the index was built
from.

Memory mapping (``mmap``): FAISS maps the file and reads pages on demand instead of copying the
index into memory (``IO_FLAG_MMAP_IFC``: inverted lists and flat vectors alike). An IVF search
reads only the ``nprobe`` lists it probes, so a mapped IVF index needs little resident memory;
an exhaustive (Flat) search reads every vector of every query batch, so mapping saves nothing
once searching starts. Hence the default: the IVF shards of a sharded folder are mapped on a
machine without GPUs; everything else is loaded (onto the GPUs where faiss-gpu has some).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from avfeat.common import one_line
from avfeat.errors import IndexMismatchError, SearchIndexError

META_FILE = "meta.json"
FORMAT = 1  # one FAISS file per modality
SHARDED_FORMAT = 2  # one FAISS file per shard, listed in meta.json


def index_file(modality: str) -> str:
    return f"{modality}.faiss"


def shard_file(modality: str, number: int) -> str:
    return f"{modality}-{number:05d}.faiss"


def table_file(modality: str) -> str:
    return f"{modality}.parquet"


def load_heads(path: str | os.PathLike, device: str = "cpu"):
    """A checkpoint written by `avfeat train-head` (``avfeat.align.checkpoint.load_checkpoint``)."""
    try:
        from avfeat.align.checkpoint import load_checkpoint
    except ImportError:
        raise SearchIndexError("this avfeat has no head checkpoints (avfeat.align.checkpoint is missing)") from None
    return load_checkpoint(path, device=device)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_index(out: str | os.PathLike, meta: dict[str, Any], shards: dict, tables: dict) -> dict[str, Any]:
    """Write ``shards`` (per modality: FAISS indexes over contiguous ranges of rows, in order),
    ``tables`` (per modality) and ``meta`` as the folder ``out``; returns meta.json's contents
    (``meta`` with the format and the shard list added).

    An existing index folder is replaced; any other non-empty folder is refused.
    """
    import faiss
    import pyarrow.parquet as pq

    meta = json.loads(json.dumps(meta))  # a copy, to add the format and the shard files to
    sharded = any(len(parts) > 1 for parts in shards.values())
    meta["format"] = SHARDED_FORMAT if sharded else FORMAT

    out = Path(out)
    if out.exists() and not (out / META_FILE).is_file():
        if not out.is_dir() or any(out.iterdir()):
            raise SearchIndexError(f"{out} exists and is not an avfeat index; choose a new --out folder")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as error:
        raise SearchIndexError(f"cannot create {tmp}: {error.strerror}") from None
    for modality, parts in shards.items():
        if len(parts) == 1:
            faiss.write_index(parts[0], str(tmp / index_file(modality)))
        else:
            listed, begin = [], 0
            for number, part in enumerate(parts):
                name = shard_file(modality, number)
                faiss.write_index(part, str(tmp / name))
                listed.append({"file": name, "begin": begin, "end": begin + part.ntotal, "bytes": (tmp / name).stat().st_size})
                begin += part.ntotal
            meta["modalities"][modality]["shards"] = listed
        pq.write_table(tables[modality], tmp / table_file(modality))
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    for entry in tmp.iterdir():
        _fsync(entry)
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
    return meta


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
        if not isinstance(self.meta, dict) or self.meta.get("format") not in (FORMAT, SHARDED_FORMAT):
            found = self.meta.get("format") if isinstance(self.meta, dict) else None
            raise SearchIndexError(f"{path} has index format {found!r}; this avfeat reads formats {FORMAT} and {SHARDED_FORMAT}")
        self._check_meta(meta_path)
        self._indexes: dict[str, Any] = {}
        self._tables: dict[str, Any] = {}

    def _check_meta(self, meta_path: Path) -> None:
        """A hand-edited or damaged meta.json is one line; shard files must be plain names inside
        this folder (a meta.json never makes avfeat read a file elsewhere)."""
        try:
            for modality, info in self.meta["modalities"].items():
                count = int(info["count"])
                for entry in info.get("shards") or []:
                    name = str(entry["file"])
                    if Path(name).name != name or name in ("", ".", ".."):
                        raise SearchIndexError(f"{meta_path} names a shard file {name!r} outside the index folder; rebuild the index")
                    if not 0 <= int(entry["begin"]) <= int(entry["end"]) <= count:
                        raise SearchIndexError(f"{meta_path}: shard {name} holds rows {entry['begin']}..{entry['end']} of {count}; rebuild the index")
            for section in ("cache", "heads"):
                str(self.meta[section]["fingerprint"])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise SearchIndexError(f"{meta_path} is damaged (missing or bad {one_line(error)}); rebuild the index with `avfeat index --overwrite`") from None

    def count(self, modality: str) -> int:
        return int(self.meta["modalities"][modality]["count"])

    def table(self, modality: str):
        """The id → (video_id, path, start, end) table, as a pyarrow Table whose row i has id i."""
        if modality not in self._tables:
            import pyarrow.parquet as pq

            path = self.path / table_file(modality)
            try:
                table = pq.read_table(path)
            except (OSError, ValueError) as error:
                raise SearchIndexError(f"cannot read {path}: {error}") from None
            if table.num_rows != self.count(modality):
                raise SearchIndexError(f"{path} has {table.num_rows} rows, meta.json says {self.count(modality)}; rebuild the index")
            self._tables[modality] = table
        return self._tables[modality]

    def shards(self, modality: str) -> list[dict[str, Any]]:
        """The modality's FAISS files with the rows they hold: ``{"file", "begin", "end"}`` (and
        ``"bytes"`` when sharded); an unsharded folder has one, holding every row."""
        info = self.meta["modalities"][modality]
        return info.get("shards") or [{"file": index_file(modality), "begin": 0, "end": self.count(modality)}]

    def faiss_index(self, modality: str):
        """The modality's FAISS index, all shards searched as one, with its tuned search
        parameters set; memory-mapped, or on the GPUs when faiss-gpu has some (see ``mmap``)."""
        if modality not in self._indexes:
            from avfeat.index.build import gpu_count, set_search_params
            from avfeat.index.shards import combine, place

            info = self.meta["modalities"][modality]
            listed = self.shards(modality)
            default = len(listed) > 1 and "IVF" in info["factory"] and gpu_count() == 0  # see the module docstring
            mmap = default if self.mmap is None else self.mmap
            parts, begin = [], 0
            for entry in listed:
                if entry["begin"] != begin:
                    raise SearchIndexError(f"{self.path / META_FILE} lists {modality} shards that do not cover rows {begin}.. in order; rebuild the index")
                parts.append(self._read_shard(entry, mmap))
                begin = entry["end"]
            if begin != self.count(modality):
                raise SearchIndexError(f"the {modality} shards of {self.path} hold {begin} rows, meta.json says {self.count(modality)}; rebuild the index")
            index = combine(parts) if mmap else place(parts)  # mapped shards stay on the CPU
            set_search_params(index, info.get("params", {}))
            self._indexes[modality] = index
        return self._indexes[modality]

    def _read_shard(self, entry: dict[str, Any], mmap: bool):
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
        return index

    def check_heads(self, checkpoint) -> None:
        built = self.meta["heads"]["fingerprint"]
        if checkpoint.fingerprint != built:
            raise IndexMismatchError(
                f"index {self.path} was built with other heads ({self.meta['heads']['path']}, fingerprint {built}), "
                f"not {checkpoint.path} (fingerprint {checkpoint.fingerprint}); rebuild it with `avfeat index` or use those heads"
            )

    def check_cache(self, cache) -> None:
        built = self.meta["cache"]["fingerprint"]
        got = cache.fingerprint()
        if got != built:
            raise IndexMismatchError(
                f"index {self.path} was built from another cache ({self.meta['cache']['path']}, fingerprint {built}), "
                f"not {cache.layout.root} (fingerprint {got}); rebuild it with `avfeat index` or pass that cache"
            )
