"""Training windows over a token cache: validation, the video split, sampling plans, and the
two ways batches reach the model (tensors held in memory, or streamed from HDF5).

Sampling is planned once per epoch on the CPU from one seeded ``torch.Generator``: each row of
the plan is B distinct training videos (a slice of a random permutation) and a random valid
window in each. Both data paths consume the same plan, so they give identical batches, and a
resumed run that restores the generator draws exactly the plans an uninterrupted run would.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avfeat.align.windows import Window, WindowGeometry, video_windows
from avfeat.core.errors import CacheError, InputError

DEFAULT_MEMORY_FRACTION = 0.5  # of available RAM (or free GPU memory) that in-memory training may use


def open_cache(path: str | Path):
    """Open a cache for training, or raise a one-line :class:`CacheError` saying what is wrong."""
    from avfeat.data.cache import Cache

    path = Path(path)
    if not path.is_dir():
        raise CacheError(f"cache folder {path} does not exist")
    cache = Cache(path)
    if not cache.layout.parts():
        raise CacheError(f"{path} has no manifest parts (an empty or incomplete cache); run `avfeat extract` to fill it")
    if not cache.records(status="ok"):
        raise CacheError(f"{path} has no videos with status ok ({_counts(cache)}); nothing to train on")
    return cache


def _counts(cache) -> str:
    return ", ".join(f"{status} {n}" for status, n in cache.status_counts().items()) or "no videos"


def split_videos(video_ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split by video (never by window, so no clip leaks).

    The ids are sorted first, so the split depends only on the set of videos and the seed.
    With ``val_fraction > 0`` and at least two videos, both sides get at least one video.
    """
    ids = sorted(video_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = 0
    if val_fraction > 0 and len(ids) > 1:
        n_val = min(len(ids) - 1, max(1, int(round(val_fraction * len(ids)))))
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val


def default_memory_limit(device: torch.device) -> int:
    """Half the free GPU memory on a GPU, else half the available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(DEFAULT_MEMORY_FRACTION * free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(DEFAULT_MEMORY_FRACTION * int(line.split()[1]) * 1024)
    except OSError:
        pass
    return int(DEFAULT_MEMORY_FRACTION * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


@dataclass
class WindowTable:
    """Every valid window of the selected videos, as flat arrays (one entry per window).

    Videos are numbered by their position in ``video_ids``; video k owns the windows
    ``first[k] : first[k] + count[k]``, in time order.
    """

    video_ids: list[str]
    geometry: WindowGeometry
    video: np.ndarray  # (W,) video number of each window
    frame: np.ndarray  # (W,) first frame within its video
    audio: np.ndarray  # (W,) first audio token within its video
    start: np.ndarray  # (W,) seconds
    first: np.ndarray  # (V,)
    count: np.ndarray  # (V,)

    @classmethod
    def build(cls, cache, video_ids: list[str], geometry: WindowGeometry) -> "WindowTable":
        video, frame, audio, start, count = [], [], [], [], []
        for k, vid in enumerate(video_ids):
            record = cache.record(vid)
            windows = video_windows(record, cache.frame_times(record), geometry)
            count.append(len(windows))
            for w in windows:
                video.append(k), frame.append(w.frame), audio.append(w.audio), start.append(w.start)
        count = np.asarray(count, dtype=np.int64)
        first = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
        as_int = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
        return cls(list(video_ids), geometry, as_int(video), as_int(frame), as_int(audio), np.asarray(start, dtype=np.float64), first, count)

    def __len__(self) -> int:
        return len(self.video)

    def disjoint_count(self, videos: list[int]) -> int:
        """How many windows ``videos`` hold end to end, without overlap: the amount of material
        an epoch should cover. (A window starts at every frame, so ``count`` grows with the
        frame rate; this does not.)"""
        return int(np.ceil(self.count[videos] / self.geometry.frames).sum())

    def evenly_spaced(self, videos: list[int], per_video: int) -> np.ndarray:
        """Up to ``per_video`` evenly spaced window ids of each of ``videos``: the fixed
        validation windows."""
        ids = []
        for k in videos:
            n = int(self.count[k])
            picks = np.unique(np.round(np.linspace(0, n - 1, min(per_video, n))).astype(np.int64)) if n else []
            ids.extend(int(self.first[k]) + int(p) for p in picks)
        return np.asarray(ids, dtype=np.int64)


def check_window(cache, video_ids: list[str], seconds: float) -> tuple[WindowGeometry, WindowTable]:
    """Geometry and window table, refusing a window no video can hold."""
    if not seconds > 0:
        raise InputError(f"--window must be positive (got {seconds})")
    geometry = WindowGeometry.for_cache(cache, seconds)
    table = WindowTable.build(cache, video_ids, geometry)
    if len(table) == 0:
        longest = max(cache.record(v).duration for v in video_ids)
        raise InputError(f"--window {seconds:g} s is longer than every video (the longest is {longest:.2f} s)")
    return geometry, table


@dataclass
class Plan:
    """One epoch of sampled windows: ``windows[s]`` is step s's batch (window ids, one per
    video), ``shifted[s]`` a window of the same video at least ``min_shift`` seconds away
    (-1 where the video has none), used as temporal negatives."""

    windows: torch.Tensor  # (steps, B) int64
    shifted: torch.Tensor  # (steps, B) int64

    def __len__(self) -> int:
        return self.windows.shape[0]

    def columns(self, share: slice) -> "Plan":
        """The same steps with only the batch positions ``share``: one process's part of each
        global batch (so it reads only those windows)."""
        return Plan(self.windows[:, share], self.shifted[:, share])


def steps_per_pass(n_videos: int, batch_size: int) -> int:
    return max(1, n_videos // batch_size)


# ---- the schedule: what a run does with the batch size, passes and epochs left unset ---------
# Fixed defaults (B = 64, one pass per epoch, 10 epochs) gave 10 optimizer steps on 80 videos of
# 4 s: held-out class R@1 0.25. Derived from the collection, the schedule there is 270 steps of
# B = 8 (R@1 0.97-1.0 both ways over 5 corpora; tests/align/test_defaults.py).
AUTO_BATCH = 64  # the automatic batch size is at most this ...
BATCHES_PER_PASS = 8  # ... and leaves at least this many batches in a pass over the training videos
AUTO_EPOCHS = 10
MIN_STEPS = 200  # an automatic schedule takes at least this many optimizer steps
SHORT_RUN_STEPS = 100  # a run with fewer steps is flagged as too short to learn


@dataclass(frozen=True)
class Schedule:
    """A run's batch size and optimizer steps, and how the steps divide into epochs."""

    batch_size: int
    passes_per_epoch: int
    epochs: int
    total_steps: int
    steps_per_pass: int

    @property
    def steps_per_epoch(self) -> int:
        return self.steps_per_pass * self.passes_per_epoch


def auto_batch_size(n_videos: int, world_size: int = 1) -> int:
    """The largest power of two up to ``AUTO_BATCH`` that leaves ``BATCHES_PER_PASS`` batches in
    a pass over ``n_videos`` (at least 2; a multiple of ``world_size``, which shares each batch).

    A small collection thus gets several steps per pass (72 videos: B = 8, 9 steps) instead of
    one batch holding every video, whose negatives would be the same at every step. On 80
    synthetic videos of 8 classes, B = 8 also beat B = 16 at half the compute: fewer negatives
    of the query's own class.
    """
    batch = 2
    while batch * 2 <= min(AUTO_BATCH, n_videos // BATCHES_PER_PASS):
        batch *= 2
    return max(world_size, batch - batch % world_size)


def plan_schedule(n_videos: int, n_windows: int, batch_size: int, passes_per_epoch: int | None = None,
                  epochs: int | None = None, steps: int | None = None) -> Schedule:
    """Fill in the parts of the schedule left unset (None) for ``n_videos`` training videos that
    hold ``n_windows`` windows end to end (``WindowTable.disjoint_count``), in batches of
    ``batch_size``.

    - passes per epoch: enough passes (one window per video each) that an epoch draws as many
      windows as the training videos hold; when the epochs are automatic too, at least enough
      that ``AUTO_EPOCHS`` epochs take ``MIN_STEPS`` steps.
    - epochs: ``AUTO_EPOCHS``, or more if that would be fewer than ``MIN_STEPS`` steps (given
      passes); with ``steps``, as many as ``steps`` needs (the last one may be partial).

    Values that are given are kept as they are.
    """
    per_pass = steps_per_pass(n_videos, batch_size)
    if passes_per_epoch is None:
        passes_per_epoch = max(1, math.ceil(n_windows / (per_pass * batch_size)))
        if epochs is None and steps is None:
            passes_per_epoch = max(passes_per_epoch, math.ceil(MIN_STEPS / (AUTO_EPOCHS * per_pass)))
    per_epoch = per_pass * passes_per_epoch
    if steps is not None:
        total, epochs = steps, math.ceil(steps / per_epoch)
    else:
        if epochs is None:
            epochs = max(AUTO_EPOCHS, math.ceil(MIN_STEPS / per_epoch))
        total = epochs * per_epoch
    return Schedule(batch_size, passes_per_epoch, epochs, total, per_pass)


def short_run_warning(schedule: Schedule, n_windows: int) -> str | None:
    """One line when the schedule is too short to learn: fewer than ``SHORT_RUN_STEPS`` steps,
    or fewer windows drawn in the whole run than the training videos hold; else None."""
    drawn = schedule.total_steps * schedule.batch_size
    if schedule.total_steps >= SHORT_RUN_STEPS and drawn >= n_windows:
        return None
    why = f"fewer than {SHORT_RUN_STEPS}" if schedule.total_steps < SHORT_RUN_STEPS else f"drawing {drawn} windows of the {n_windows} the training videos hold"
    return (f"this run is too short to learn: {schedule.total_steps} optimizer steps of {schedule.batch_size} windows ({why}); "
            "leave --epochs, --steps and --passes-per-epoch unset for a schedule sized to the collection, or raise them")


def epoch_plan(table: WindowTable, videos: list[int], batch_size: int, passes: int, min_shift: float, generator: torch.Generator, steps: int | None = None) -> Plan:
    """Sample an epoch: ``passes`` random permutations of ``videos``, cut into batches of B
    distinct videos (the remainder of each pass is dropped), a uniformly random window in
    each, and a shifted window for temporal negatives.

    The generator is advanced by the same amount whatever ``steps`` truncates the plan to, and
    whether or not temporal negatives are used, so the random stream never depends on them.
    """
    videos_t = torch.as_tensor(videos, dtype=torch.int64)
    per_pass = steps_per_pass(len(videos), batch_size)
    rows = [videos_t[torch.randperm(len(videos), generator=generator)[: per_pass * batch_size]].view(per_pass, batch_size) for _ in range(passes)]
    chosen = torch.cat(rows)  # (passes * per_pass, B) video numbers
    u = torch.rand(chosen.shape, generator=generator, dtype=torch.float64)
    u_shift = torch.rand(chosen.shape, generator=generator, dtype=torch.float64)
    if steps is not None:
        chosen, u, u_shift = chosen[:steps], u[:steps], u_shift[:steps]
    first = torch.as_tensor(table.first)[chosen]
    count = torch.as_tensor(table.count)[chosen]
    windows = first + (u * count).long().clamp(max=count - 1)
    shifted = torch.full_like(windows, -1)
    starts = table.start
    for index in range(windows.numel()):  # small: steps * B per epoch
        w = int(windows.view(-1)[index])
        k = int(table.video[w])
        lo, n = int(table.first[k]), int(table.count[k])
        candidates = np.flatnonzero(np.abs(starts[lo : lo + n] - starts[w]) >= min_shift - 1e-6)
        if len(candidates):
            pick = candidates[min(len(candidates) - 1, int(float(u_shift.view(-1)[index]) * len(candidates)))]
            shifted.view(-1)[index] = lo + int(pick)
    return Plan(windows, shifted)


def token_bytes(cache, video_ids: list[str]) -> int:
    """Bytes the selected videos' audio and visual tokens take in memory (storage dtype)."""
    config = cache.config
    item = np.dtype(config.storage_dtype).itemsize
    audio_rows = sum(cache.record(v).audio_length for v in video_ids)
    visual_rows = sum(cache.record(v).visual_length for v in video_ids)
    return item * (audio_rows * config.audio_dim + visual_rows * config.visual_tokens * config.visual_dim)


class MemoryWindows:
    """All selected tokens in two device tensors; a batch is two index gathers on the device."""

    def __init__(self, cache, table: WindowTable, device: torch.device, progress=None):
        config = cache.config
        dtype = getattr(torch, config.storage_dtype)
        records = [cache.record(v) for v in table.video_ids]
        audio_len = np.asarray([r.audio_length for r in records], dtype=np.int64)
        visual_len = np.asarray([r.visual_length for r in records], dtype=np.int64)
        self.audio = torch.empty((int(audio_len.sum()), config.audio_dim), dtype=dtype)
        self.visual = torch.empty((int(visual_len.sum()), config.visual_tokens, config.visual_dim), dtype=dtype)
        audio_at = np.concatenate([[0], np.cumsum(audio_len)[:-1]])
        visual_at = np.concatenate([[0], np.cumsum(visual_len)[:-1]])
        videos = range(len(records)) if progress is None else progress(range(len(records)))
        for k in videos:  # one contiguous read per video and modality
            self.audio[audio_at[k] : audio_at[k] + audio_len[k]] = torch.from_numpy(cache.read_audio(records[k]))
            self.visual[visual_at[k] : visual_at[k] + visual_len[k]] = torch.from_numpy(cache.read_frames(records[k]))
        self.audio, self.visual = self.audio.to(device), self.visual.to(device)
        self.nbytes = self.audio.nbytes + self.visual.nbytes
        # Where each window's tokens start in the flat tensors, kept on the device.
        self.window_audio = torch.as_tensor(audio_at[table.video] + table.audio, device=device)
        self.window_frame = torch.as_tensor(visual_at[table.video] + table.frame, device=device)
        self.audio_steps = torch.arange(table.geometry.audio_tokens, device=device)
        self.frame_steps = torch.arange(table.geometry.frames, device=device)

    def gather(self, window_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) window ids → audio (B, T, D_a) and visual (B, F, 1 + P, D_v) on the device."""
        window_ids = window_ids.to(self.window_audio.device, non_blocking=True)
        audio_rows = (self.window_audio[window_ids][:, None] + self.audio_steps).flatten()
        frame_rows = (self.window_frame[window_ids][:, None] + self.frame_steps).flatten()
        b = len(window_ids)
        audio = self.audio.index_select(0, audio_rows).view(b, -1, self.audio.shape[-1])
        visual = self.visual.index_select(0, frame_rows).view(b, -1, *self.visual.shape[1:])
        return audio, visual

    def batches(self, ids: torch.Tensor):
        """Yield (audio, visual) for each row of ``ids`` (steps, k), in order."""
        for row in ids.to(self.window_audio.device):
            yield self.gather(row)


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


def plan_ids(plan: Plan, temporal_negatives: bool) -> torch.Tensor:
    """The window ids one step reads: the batch, then (with temporal negatives) the shifted
    windows, where a missing shift (-1) reads the window itself and is masked later."""
    if not temporal_negatives:
        return plan.windows
    return torch.cat([plan.windows, torch.where(plan.shifted >= 0, plan.shifted, plan.windows)], dim=1)

