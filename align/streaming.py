"""Streaming training windows from the cache's HDF5 shards: DataLoader workers read each
batch's windows straight from the files (direct chunk reads where the layout allows), so
training runs on collections larger than memory with the same batches as
:class:`avfeat.align.data.MemoryWindows`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from avfeat.align.data import WindowTable
from avfeat.align.windows import Window
from avfeat.core.errors import CacheError


class _ShardFile:
    """One shard opened for direct reads: an OS file descriptor, and per token dataset where
    each HDF5 chunk lies in the file.

    The shard writer stores tokens in uncompressed chunks that span whole rows (``(rows, *row
    shape)``), so rows ``[a, b)`` inside one chunk are one contiguous byte range of the file:
    a window is read with one ``pread`` per chunk it touches, exactly the bytes it needs, into
    the batch's own buffer. (Through h5py, every window slice re-read its whole 512 KiB
    chunk.) A dataset that is filtered, big-endian or laid out otherwise is read through h5py.
    """

    def __init__(self, path: Path):
        import h5py

        self.fd = os.open(path, os.O_RDONLY)
        self.h5 = h5py.File(path, "r")
        self.direct: dict[str, tuple | None] = {}
        self._datasets: dict = {}

    def dataset(self, name: str):
        """The h5py dataset ``name`` (opened once), or None when the shard has none."""
        if name not in self._datasets:
            self._datasets[name] = self.h5[name] if name in self.h5 else None
        return self._datasets[name]

    def layout(self, name: str):
        """(dataset, rows per chunk, bytes per row, {chunk index: byte offset}) or None when the
        dataset cannot be read directly."""
        if name not in self.direct:
            dataset = self.dataset(name)
            ok = (dataset.chunks is not None and tuple(dataset.chunks[1:]) == tuple(dataset.shape[1:])
                  and dataset.id.get_create_plist().get_nfilters() == 0 and dataset.dtype.byteorder in ("<", "|", "="))
            row_bytes = int(np.prod(dataset.shape[1:], dtype=np.int64)) * dataset.dtype.itemsize
            self.direct[name] = (dataset, dataset.chunks[0], row_bytes, {}) if ok and np.little_endian else None
        return self.direct[name]

    def read_into(self, name: str, begin: int, out: np.ndarray) -> None:
        """Rows ``[begin, begin + len(out))`` of dataset ``name`` into ``out`` (C-contiguous, the
        dataset's dtype)."""
        direct = self.layout(name)
        if direct is None:
            out[...] = self.dataset(name)[begin : begin + len(out)]
            return
        dataset, rows, row_bytes, offsets = direct
        stop = begin + len(out)
        if stop > dataset.shape[0] or begin < 0:
            raise CacheError(f"rows {begin}:{stop} lie outside {self.h5.filename}'s {name} ({dataset.shape[0]} rows)")
        target = memoryview(out.reshape(-1).view(np.uint8))
        at = begin
        while at < stop:
            chunk = at // rows
            end = min(stop, (chunk + 1) * rows)
            offset = offsets.get(chunk)
            if offset is None:
                offset = offsets[chunk] = dataset.id.get_chunk_info_by_coord((chunk * rows,) + (0,) * (dataset.ndim - 1)).byte_offset
            n = (end - at) * row_bytes
            got = os.preadv(self.fd, [target[(at - begin) * row_bytes : (at - begin) * row_bytes + n]], offset + (at - chunk * rows) * row_bytes)
            if got != n:
                raise CacheError(f"short read from {self.h5.filename} ({got} of {n} bytes): the shard is truncated")
            at = end

    def close(self) -> None:
        os.close(self.fd)
        self.h5.close()


class StreamBatches(torch.utils.data.Dataset):
    """Batches read from HDF5 in DataLoader workers: item s is the batch of rows ``ids[s]``.

    Holds only the cache path and small arrays, so it pickles to workers; each worker opens the
    cache and the shards itself on first use and keeps them open. A batch is read in one pass
    over its windows sorted by (shard, offset), each window's rows of each modality read
    straight into the batch arrays (see :class:`_ShardFile`); int8 tokens and their scales are
    read alike and dequantized by the cache's own rule, so a batch equals ``Cache.read_windows``
    (and ``MemoryWindows.gather``) bit for bit.
    """

    def __init__(self, cache_path: str | Path, table: WindowTable, ids: torch.Tensor):
        self.cache_path = str(cache_path)
        self.table = table
        self.ids = ids  # (steps, k) window ids; several columns when shifted windows ride along
        self._cache = None
        self._pid = None

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getstate__(self):
        return {**self.__dict__, "_cache": None, "_pid": None}

    def _open(self) -> None:
        from avfeat.data.cache import Cache

        if self._cache is None or self._pid != os.getpid():  # never use a parent's handles after fork
            self._cache, self._pid, self._files = Cache(self.cache_path), os.getpid(), {}
            self._records = [self._cache.ok_record(v) for v in self.table.video_ids]
            self._dtype = self._cache.token_dtype

    def _file(self, record) -> _ShardFile | None:
        """The shard's direct reader, or None when the shard is not the size the manifest
        recorded (then the cache's own reads raise their error)."""
        from avfeat.data.layout import shard_name

        shard = record.shard
        if shard not in self._files:
            path = self._cache.layout.shard_dir / shard_name(shard)
            expected = record.shard_bytes
            ok = path.is_file() and (expected is None or path.stat().st_size == expected)
            self._files[shard] = _ShardFile(path) if ok else None
        return self._files[shard]

    def read(self, window_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Window ids → audio (k, T, D_a) and visual (k, F, 1 + P, D_v), as ``Cache.read_windows``."""
        self._open()
        table, geometry = self.table, self.table.geometry
        records = [self._records[table.video[w]] for w in window_ids]
        files = [self._file(r) for r in records]
        if any(f is None for f in files):  # a damaged shard: the cache's reads say what is wrong
            windows = [Window(table.video_ids[table.video[w]], int(table.frame[w]), int(table.audio[w]), 0.0, 0.0) for w in window_ids]
            return self._cache.read_windows(windows, geometry)
        from avfeat.data.codecs import codec_of

        k, out = len(window_ids), []
        for modality, length, first, base in (("audio", geometry.audio_tokens, table.audio, "audio_offset"),
                                              ("visual", geometry.frames, table.frame, "visual_offset")):
            name = f"{modality}/tokens"
            rows = np.empty((k, length, *files[0].dataset(name).shape[1:]), dtype=self._dtype)
            starts = [getattr(r, base) + int(first[w]) for r, w in zip(records, window_ids)]
            for i in sorted(range(k), key=lambda i: (records[i].shard, starts[i])):  # in file order
                stored = files[i].dataset(name).dtype
                codec = codec_of(stored)
                if codec.floats and stored == rows.dtype:  # the bytes are the rows: read them in place
                    files[i].read_into(name, starts[i], rows[i])
                    continue
                parts = {}
                for part in codec.parts:  # each part's rows, then the codec's decoding (elementwise)
                    dataset = codec.dataset(files[i].dataset, modality, part.name, files[i].h5.filename)
                    parts[part.name] = np.empty((length, *dataset.shape[1:]), dtype=dataset.dtype)
                    files[i].read_into(f"{modality}/{part.name}", starts[i], parts[part.name])
                rows[i] = codec.decode(parts, self._dtype)
            out.append(rows)
        return out[0], out[1]

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        audio, visual = self.read(self.ids[step].tolist())
        return torch.from_numpy(audio), torch.from_numpy(visual)


class _Rows(torch.utils.data.Sampler):
    """The window ids of each step of the current epoch, as the DataLoader's indices: the
    workers outlive an epoch, so each epoch hands them its plan through this sampler (which
    the DataLoader iterates in the main process)."""

    def __init__(self):
        self.ids = torch.empty((0, 0), dtype=torch.int64)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __iter__(self):
        return iter(self.ids.tolist())


class _WindowReads(StreamBatches):
    """Item ``row`` (a list of window ids) is that batch."""

    def __init__(self, cache_path: str | Path, table: WindowTable):
        super().__init__(cache_path, table, torch.empty((0, 0), dtype=torch.int64))

    def __getitem__(self, row) -> tuple[torch.Tensor, torch.Tensor]:
        audio, visual = self.read(list(row))
        return torch.from_numpy(audio), torch.from_numpy(visual)


class StreamWindows:
    """The streaming counterpart of :class:`MemoryWindows`: yields the plan's batches through a
    DataLoader whose worker processes read the windows' bytes from the HDF5 shards.

    The workers are started once and kept for every later epoch (and validation pass), with
    their open shards; each call hands them its ids.
    """

    def __init__(self, cache_path: str | Path, table: WindowTable, device: torch.device, workers: int):
        self.cache_path, self.table, self.device, self.workers = cache_path, table, device, workers
        self.nbytes = 0
        self._reads = _WindowReads(cache_path, table)
        self._rows = _Rows()
        self._loader = None
        self._busy = False

    def batches(self, ids: torch.Tensor):
        """Yield (audio, visual) for each row of ``ids`` (steps, k), in order, on the device."""
        if self.workers == 0:
            for row in ids.tolist():
                audio, visual = self._reads[row]
                yield audio.to(self.device), visual.to(self.device)
            return
        if self._busy:  # another pass is still being read: it keeps the workers; this one gets its own
            rows, loader = _Rows(), None
        else:
            if self._loader is None:
                self._loader = self._make_loader(self._rows, persistent=True)
            rows, loader = self._rows, self._loader
            self._busy = True
        rows.ids = ids
        try:
            for audio, visual in loader or self._make_loader(rows, persistent=False):
                yield audio.to(self.device, non_blocking=True), visual.to(self.device, non_blocking=True)
        finally:
            if loader is not None:
                self._busy = False

    def _make_loader(self, rows: _Rows, persistent: bool):
        return torch.utils.data.DataLoader(
            self._reads, batch_size=None, sampler=rows, num_workers=self.workers,
            pin_memory=self.device.type == "cuda", prefetch_factor=4, persistent_workers=persistent,
        )
