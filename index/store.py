"""The index folder on disk, and the checks that tie it to its heads and its cache.

Layout::

    INDEX/
      meta.json        dims, counts, index types and search parameters, window and hop, the
                       cache (path, fingerprint, models) and heads (path, fingerprint) it was built from
      audio.faiss      FAISS index of the audio window vectors, ids = rows of audio.parquet
      audio.parquet    id, video_id, path, start, end (seconds on the video's timeline)
      visual.faiss     the same for visual window vectors
      visual.parquet

The folder is written whole as ``INDEX.tmp`` (meta.json last) and renamed into place, so a
crash leaves either the previous index or the new one, never a mix. Loading checks that each
FAISS index, its table and meta.json agree on the count, and, when heads or a cache are given,
that their fingerprints are the ones the index was built from.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from avfeat.errors import IndexMismatchError, SearchIndexError

META_FILE = "meta.json"
FORMAT = 1


def index_file(modality: str) -> str:
    return f"{modality}.faiss"


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


def write_index(out: str | os.PathLike, meta: dict[str, Any], indexes: dict, tables: dict) -> Path:
    """Write ``indexes`` and ``tables`` (per modality) and ``meta`` as the folder ``out``.

    An existing index folder is replaced; any other non-empty folder is refused.
    """
    import faiss
    import pyarrow.parquet as pq

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
    for modality, index in indexes.items():
        faiss.write_index(index, str(tmp / index_file(modality)))
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
    return out


class IndexFolder:
    """A loaded index folder: meta.json now, each modality's FAISS index and table on first use."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            raise SearchIndexError(f"{path} is not an avfeat index (no {META_FILE}); build one with `avfeat index`")
        try:
            self.meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as error:
            raise SearchIndexError(f"cannot read {meta_path}: {error}") from None
        if self.meta.get("format") != FORMAT:
            raise SearchIndexError(f"{path} has index format {self.meta.get('format')!r}; this avfeat reads format {FORMAT}")
        self._indexes: dict[str, Any] = {}
        self._tables: dict[str, Any] = {}

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

    def faiss_index(self, modality: str):
        """The FAISS index with its tuned search parameters set (on the GPU when faiss-gpu has one)."""
        if modality not in self._indexes:
            import faiss

            path = self.path / index_file(modality)
            try:
                index = faiss.read_index(str(path))
            except RuntimeError as error:
                raise SearchIndexError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
            if index.ntotal != self.count(modality):
                raise SearchIndexError(f"{path} holds {index.ntotal} vectors, meta.json says {self.count(modality)}; rebuild the index")
            from avfeat.index.build import set_search_params, to_gpu

            index = to_gpu(index)
            set_search_params(index, self.meta["modalities"][modality].get("params", {}))
            self._indexes[modality] = index
        return self._indexes[modality]

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
