"""Training windows over a token cache: validation, the video split, the window table, sampling
plans, and batches from tensors held in memory (the streaming path is ``streaming.py``; the
schedule, ``schedule.py``).

Sampling is planned once per epoch on the CPU from one seeded ``torch.Generator``: each row of
the plan is B distinct training videos (a slice of a random permutation) and a random valid
window in each. Both data paths consume the same plan, so they give identical batches, and a
resumed run that restores the generator draws exactly the plans an uninterrupted run would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avfeat.align.schedule import steps_per_pass
from avfeat.align.windows import WindowGeometry, video_windows
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


SPLIT_COLUMN = "split"  # an input table's column naming each video's part
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}  # its values (any case) → part


def column_split(cache, video_ids: list[str]) -> dict[str, list[str]] | None:
    """{"train", "val", "test": sorted ids} from the input table's split column, or None when no
    video has one; a value that names no part is an ``InputError``."""
    records = [cache.record(v) for v in video_ids]
    if not any(SPLIT_COLUMN in r.metadata for r in records):
        return None
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for record in records:
        value = record.metadata.get(SPLIT_COLUMN)
        part = SPLIT_NAMES.get(value.strip().lower()) if isinstance(value, str) else None
        if part is None:
            raise InputError(f"video {record.video_id} has split {value!r} in the input table's split column: use train, val, validation or test")
        parts[part].append(record.video_id)
    return {name: sorted(ids) for name, ids in parts.items()}


def choose_split(cache, video_ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str], dict, str | None]:
    """(train ids, validation ids, the checkpoint's "split" record, a note saying where the split
    came from or None). The input table's split column wins: train on its train videos, validate
    on its val ones (without any, ``val_fraction`` of the train videos), never train on its test
    ones; otherwise ``split_videos``."""
    record = {"seed": seed, "val_fraction": val_fraction}
    parts = column_split(cache, video_ids)
    if parts is None:
        train, val = split_videos(video_ids, val_fraction, seed)
        return train, val, {**record, "val_videos": val}, None
    train, val = parts["train"], parts["val"]
    how = "validation"
    if not val:
        train, val = split_videos(train, val_fraction, seed)
        how = f"validation (--val-fraction {val_fraction:g} of train: no val rows)"
    note = f"split from the input table's split column: {len(train)} train, {len(val)} {how}, {len(parts['test'])} test videos (never trained on)"
    return train, val, {**record, "val_videos": val, "test_videos": parts["test"], "source": "split column"}, note


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


def temporal_negatives_fit(table: "WindowTable", videos: list[int], min_shift: float) -> tuple[bool, str]:
    """Whether automatic temporal negatives go on, and a line saying why: on when at least half
    of ``videos`` hold two windows ``min_shift`` seconds apart (window + min_shift seconds of
    tokens), since a video without one gets no temporal negative."""
    starts = [table.start[table.first[k] : table.first[k] + table.count[k]] for k in videos]
    fit = sum(1 for s in starts if len(s) and s[-1] - s[0] >= min_shift - 1e-6)
    need = f"{table.geometry.seconds + min_shift:g} s (window + --min-shift)"
    if 2 * fit >= len(videos):
        return True, f"temporal negatives on: {fit} of {len(videos)} training videos last {need} or more (--no-temporal-negatives turns them off)"
    return False, f"temporal negatives off: only {fit} of {len(videos)} training videos last {need} or more"


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


def plan_ids(plan: Plan, temporal_negatives: bool) -> torch.Tensor:
    """The window ids one step reads: the batch, then (with temporal negatives) the shifted
    windows, where a missing shift (-1) reads the window itself and is masked later."""
    if not temporal_negatives:
        return plan.windows
    return torch.cat([plan.windows, torch.where(plan.shifted >= 0, plan.shifted, plan.windows)], dim=1)
