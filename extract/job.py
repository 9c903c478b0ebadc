"""The extraction job: decode workers, backbones and the shard writer, overlapped.

Decoding runs in worker processes (``DecodePool``) that stay ahead of the model; the model
runs in this process; a writer thread appends tokens to the open shard. Work is cut into
shards of ``shard_size`` consecutive input videos and every batch is formed inside one shard
from videos in input order, so a resumed run forms exactly the batches (and hence the exact
tensors) that an uninterrupted run would have.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from avfeat.data.cache import OK, CacheLayout, ShardWriter, empty_row, open_for_writing, read_manifest
from avfeat.extract.inputs import video_id
from avfeat.extract.media import DecodedMedia, DecodeSpec, MediaError, decode

MISSING = "missing"  # a listed file that does not exist


@dataclass
class ExtractConfig:
    """Settings that determine the cache's contents (stored in cache.json)."""

    audio_model: str = "facebook/hubert-base-ls960"
    visual_model: str = "facebook/dinov2-small"
    audio_layer: int = -1
    visual_layer: int = -1
    fps: float = 1.0
    storage_dtype: str = "float16"


@dataclass
class RunOptions:
    """Settings that change how fast the job runs, not what it writes."""

    batch_size: int = 32  # frames per visual forward; audio windows per forward is a quarter of it
    workers: int = 2
    device: str = "auto"
    dtype: str = "auto"  # compute dtype, see resolve_dtype
    shard_size: int = 64  # videos per shard (the unit of commit and resume)
    limit: int | None = None
    retry_failed: bool = False
    timeout: float = 600.0  # seconds one file may take to decode
    quiet: bool = False


@dataclass
class ExtractSummary:
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    skipped: int = 0  # already recorded before this run
    processed: int = 0  # handled by this run
    media_seconds: float = 0.0  # ok videos' duration, whole cache of these inputs
    bytes_written: int = 0
    seconds: float = 0.0

    @property
    def any_failed(self) -> bool:
        return bool(self.failed)

    def lines(self) -> list[str]:
        hours = self.media_seconds / 3600
        per_hour = self.bytes_written / hours if hours and self.processed else 0.0
        failed = ", ".join(f"{status} {count}" for status, count in sorted(self.failed.items())) or "none"
        return [
            f"videos: {self.ok} ok, failed: {failed} ({self.processed} processed now, {self.skipped} already in the cache)",
            f"media: {hours:.3f} h ok; wrote {_human_bytes(self.bytes_written)} in {self.seconds:.1f} s"
            + (f" ({_human_bytes(per_hour)} per media-hour)" if per_hour else ""),
        ]


def _human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1024 or unit == "TB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TB"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: bfloat16 on GPUs and on CPUs with native bfloat16 matmul (AVX512-BF16/AMX),
    where it is ~2.5x faster than float32 and tokens keep cosine > 0.9999; float32 elsewhere."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16"
    import torch

    return "bfloat16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"


@dataclass
class _Task:
    row: dict[str, Any]
    spec: DecodeSpec


def _decode_task(task: _Task) -> DecodedMedia:
    return decode(task.row["path"], task.spec)


class _WriterThread:
    """Runs shard writes in order on a background thread; re-raises its errors here."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue(maxsize=64)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="avfeat-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    job()
            except BaseException as error:  # handed to the main thread in submit()/drain()
                self._error = error
            finally:
                self._queue.task_done()

    def submit(self, job: Callable[[], None]) -> None:
        self._check()
        self._queue.put(job)

    def drain(self) -> None:
        self.wait()
        self._check()

    def wait(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error


class Extractor:
    """Loads the backbones once and extracts lists of videos into a cache."""

    def __init__(self, config: ExtractConfig, options: RunOptions):
        from avfeat.extract.models import load_audio_backbone, load_visual_backbone

        self.config = config
        self.options = options
        device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, device)
        self.device, self.dtype = device, dtype
        self.audio = load_audio_backbone(config.audio_model, config.audio_layer, device=device, dtype=dtype)
        self.visual = load_visual_backbone(config.visual_model, config.visual_layer, device=device, dtype=dtype)
        self.spec = DecodeSpec(sample_rate=self.audio.sample_rate, fps=config.fps, **self.visual.decode_spec_geometry())

    def cache_config(self) -> dict[str, Any]:
        """What cache.json records: the config plus what the models imply about the tensors."""
        return {
            **asdict(self.config),
            "sample_rate": self.audio.sample_rate,
            "audio_token_rate": self.audio.token_rate,
            "audio_dim": self.audio.dim,
            "visual_dim": self.visual.dim,
            "visual_tokens": 1 + self.visual.num_patches,
            "visual_grid": list(self.visual.grid),
            "frame_geometry": {k: list(v) if isinstance(v, tuple) else v for k, v in self.visual.decode_spec_geometry().items()},
        }

    def shard_attrs(self) -> dict[str, Any]:
        """Shard attributes: the cache config plus how this run computed the tokens."""
        return {
            **self.cache_config(),
            "random_models": bool(self.audio.is_random or self.visual.is_random),
            "compute_device": self.device,
            "compute_dtype": self.dtype,
        }

    def encode_file(self, path: str | Path) -> tuple[DecodedMedia, np.ndarray, np.ndarray]:
        """Decode one file and run both backbones: (media, audio tokens (T, D_a), visual tokens
        (F, 1 + P, D_v)), the same tensors `extract` would cache. Raises MediaError."""
        media = decode(path, self.spec)
        ((_, audio, visual, _),) = self._encode([({}, media)])
        return media, audio, visual

    def encode_audio_file(self, path: str | Path) -> tuple[np.ndarray, float]:
        """Only the sound of a file (an audio-only query: wav, flac, mp3, ...) through the audio
        backbone: (tokens (T, D_a), time of the first sample). Raises MediaError."""
        from avfeat.extract.media import decode_audio

        waveform, start = decode_audio(path, self.audio.sample_rate)
        (tokens,) = self.audio.encode([waveform], batch_size=1)
        return tokens, start

    def encode_image(self, path: str | Path) -> np.ndarray:
        """An image file as one frame through the visual backbone: (1, 1 + P, D_v). Raises MediaError."""
        from avfeat.extract.media import load_image

        return self.visual.encode(load_image(path, self.spec)[None], batch_size=1)

    def run(
        self,
        paths: list[Path],
        out: str | Path,
        progress: Callable[[int, float], None] | None = None,
        on_plan: Callable[[int], None] | None = None,
    ) -> ExtractSummary:
        """Extract ``paths`` into the cache at ``out``, skipping what it already records.

        ``on_plan(n)`` is told how many videos this run will process; ``progress(videos,
        media_seconds)`` is called as videos are written.
        """
        started = time.perf_counter()
        layout = open_for_writing(out, self.cache_config())
        recorded = {row["video_id"]: row for row in read_manifest(layout.root).to_pylist()}
        summary = ExtractSummary()
        todo: list[dict[str, Any]] = []
        for path in paths:
            vid = video_id(path)
            previous = recorded.get(vid)
            if previous is not None and (previous["status"] == OK or not self.options.retry_failed):
                summary.skipped += 1
                continue
            todo.append(_new_row(vid, path))
        if self.options.limit is not None:
            todo = todo[: self.options.limit]
        if on_plan:
            on_plan(len(todo))

        self._extract(layout, todo, summary, progress)

        final = {row["video_id"]: row for row in read_manifest(layout.root).to_pylist()}
        statuses = Counter()
        for path in paths:
            row = final.get(video_id(path))
            if row is None:
                continue  # left out by --limit
            statuses[row["status"]] += 1
            if row["status"] == OK:
                summary.media_seconds += row["duration"]
        summary.ok = statuses.pop(OK, 0)
        summary.failed = dict(statuses)
        summary.seconds = time.perf_counter() - started
        return summary

    def _extract(self, layout: CacheLayout, todo: list[dict[str, Any]], summary: ExtractSummary, progress) -> None:
        from avfeat.extract.workers import DecodePool

        if not todo:
            return
        next_index = max(layout.parts(), default=-1) + 1
        shard_size = max(1, self.options.shard_size)
        shards = [todo[i : i + shard_size] for i in range(0, len(todo), shard_size)]
        writer_thread = _WriterThread()
        tasks = (_Task(row, self.spec) for row in todo if row["status"] == OK)
        try:
            with DecodePool(_decode_task, workers=self.options.workers, timeout=self.options.timeout) as pool:
                decoded = pool.imap(tasks)
                for offset, rows in enumerate(shards):
                    writer = ShardWriter(
                        layout,
                        next_index + offset,
                        audio_dim=self.audio.dim,
                        visual_tokens_per_frame=1 + self.visual.num_patches,
                        visual_dim=self.visual.dim,
                        attrs=self.shard_attrs(),
                        dtype=self.config.storage_dtype,
                    )
                    try:
                        self._fill_shard(writer, rows, decoded, writer_thread, progress)
                        writer_thread.submit(writer.commit)
                        writer_thread.drain()
                    except BaseException:
                        writer_thread.wait()  # no write may touch the file while it is removed
                        writer.abort()
                        raise
                    summary.processed += len(rows)
                    summary.bytes_written += writer.final_path.stat().st_size
        finally:
            writer_thread.close()

    def _fill_shard(self, writer: ShardWriter, rows, decoded, writer_thread: _WriterThread, progress) -> None:
        """Decode, encode and append one shard's videos, batching across videos in input order."""
        group: list[tuple[dict[str, Any], DecodedMedia]] = []
        group_frames = 0
        target = max(1, self.options.batch_size) * 4

        def flush() -> None:
            nonlocal group, group_frames
            if group:
                for row, audio, visual, times in self._encode(group):
                    writer_thread.submit(lambda r=row, a=audio, v=visual, t=times: writer.add(r, a, v, t))
                    if progress:
                        progress(1, row["duration"])
            group, group_frames = [], 0

        for row in rows:
            if row["status"] != OK:  # missing before decoding
                writer_thread.submit(lambda r=row: writer.add_failure(r, r["status"], r["error"]))
                if progress:
                    progress(1, 0.0)
                continue
            task, result = next(decoded)
            assert task.row["video_id"] == row["video_id"], "decode results out of order"
            if isinstance(result, MediaError):
                writer_thread.submit(lambda r=row, e=result: writer.add_failure(r, e.status, e.message))
                if progress:
                    progress(1, 0.0)
                continue
            group.append((_with_media(row, result, self.audio.token_rate, self.config.fps), result))
            group_frames += len(result.frames)
            if group_frames >= target:
                flush()
        flush()

    def _encode(self, group: list[tuple[dict[str, Any], DecodedMedia]]):
        """Run both backbones over a group of decoded videos; yields (row, audio, visual, times)."""
        frames = np.concatenate([media.frames for _, media in group])
        visual = self.visual.encode(frames, batch_size=self.options.batch_size)
        audio = self.audio.encode([media.audio for _, media in group], batch_size=max(1, self.options.batch_size // 4))
        start = 0
        for (row, media), audio_tokens in zip(group, audio):
            count = len(media.frames)
            yield row, audio_tokens, visual[start : start + count], media.frame_times
            start += count


def _new_row(vid: str, path: Path) -> dict[str, Any]:
    try:
        stat = os.stat(path)
    except OSError as error:
        row = empty_row(vid, str(Path(path).resolve()), 0, 0.0)
        row.update(status=MISSING, error=f"cannot read file: {error.strerror}")
        return row
    return empty_row(vid, str(Path(path).resolve()), stat.st_size, stat.st_mtime)


def _with_media(row: dict[str, Any], media: DecodedMedia, token_rate: float, fps: float) -> dict[str, Any]:
    return dict(
        row,
        duration=float(media.duration),
        audio_start=float(media.audio_start),
        audio_rate=float(token_rate),
        fps=float(fps),
        width=int(media.width),
        height=int(media.height),
        source_sample_rate=int(media.source_sample_rate),
    )
