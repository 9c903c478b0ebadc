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

    def __init__(self, config: ExtractConfig, options: RunOptions, load_device: str | None = None):
        """``load_device`` overrides ``options.device`` for this object's models only (a Ray
        driver loads them on the CPU to learn the tensors' shapes; its workers use the option)."""
        from avfeat.extract.models import load_audio_backbone, load_visual_backbone

        self.config = config
        self.options = options
        device = resolve_device(load_device or options.device)
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

    def shard_attrs(self, device: str | None = None, dtype: str | None = None) -> dict[str, Any]:
        """Shard attributes: the cache config plus how the tokens were computed (by default on
        this object's models; a distributed run passes its workers' device and dtype)."""
        return {
            **self.cache_config(),
            "random_models": bool(self.audio.is_random or self.visual.is_random),
            "compute_device": device or self.device,
            "compute_dtype": dtype or self.dtype,
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
        ray_address: str | None = None,
    ) -> ExtractSummary:
        """Extract ``paths`` into the cache at ``out``, skipping what it already records.

        ``on_plan(n)`` is told how many videos this run will process; ``progress(videos,
        media_seconds)`` is called as videos are written. With ``ray_address`` (``"local"``
        for a Ray started here) the work runs as a Ray Data pipeline (extract/ray_job.py) and
        writes the same shards and manifest parts.
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

        if ray_address is None:
            self._extract(layout, todo, summary, progress)
        else:
            from avfeat.extract.ray_job import extract_on_ray

            extract_on_ray(self, layout, todo, summary, progress, address=ray_address)

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
        writer_thread = _WriterThread()
        tasks = (_Task(row, self.spec) for row in todo if row["status"] == OK)
        try:
            with DecodePool(_decode_task, workers=self.options.workers, timeout=self.options.timeout) as pool:
                decoded = pool.imap(tasks)
                for index, rows in plan_shards(layout, todo, self.options.shard_size):
                    writer = self.shard_writer(layout, index, self.shard_attrs())
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

    def shard_writer(self, layout: CacheLayout, index: int, attrs: dict[str, Any]) -> ShardWriter:
        return ShardWriter(
            layout,
            index,
            audio_dim=self.audio.dim,
            visual_tokens_per_frame=1 + self.visual.num_patches,
            visual_dim=self.visual.dim,
            attrs=attrs,
            dtype=self.config.storage_dtype,
        )

    def _fill_shard(self, writer: ShardWriter, rows, decoded, writer_thread: _WriterThread, progress) -> None:
        """Decode, encode and append one shard's videos, batching across videos in input order."""
        group: list[tuple[dict[str, Any], DecodedMedia]] = []
        group_frames = 0
        target = group_target(self.options.batch_size)

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
            group.append((with_media(row, result, self.audio.token_rate, self.config.fps), result))
            group_frames += len(result.frames)
            if group_frames >= target:
                flush()
        flush()

    def _encode(self, group: list[tuple[dict[str, Any], DecodedMedia]]):
        """Run both backbones over a group of decoded videos; yields (row, audio, visual, times)."""
        medias = [media for _, media in group]
        visual = encode_visual_group(self.visual, medias, self.options.batch_size)
        audio = encode_audio_group(self.audio, medias, self.options.batch_size)
        for (row, media), audio_tokens, visual_tokens in zip(group, audio, visual):
            yield row, audio_tokens, visual_tokens, media.frame_times


def plan_shards(layout: CacheLayout, todo: list[dict[str, Any]], shard_size: int) -> list[tuple[int, list[dict[str, Any]]]]:
    """Cut the videos to process into shards of consecutive inputs, numbered after the cache's
    last committed part, so every shard of a run has its own name whoever writes it."""
    first = max(layout.parts(), default=-1) + 1
    size = max(1, shard_size)
    return [(first + n, todo[start : start + size]) for n, start in enumerate(range(0, len(todo), size))]


def group_target(batch_size: int) -> int:
    """Frames a group of consecutive videos gathers before it is encoded: several visual
    batches, so the model sees full batches across short videos."""
    return max(1, batch_size) * 4


def encode_groups(frame_counts: list[int], batch_size: int) -> list[list[int]]:
    """The groups (positions into a shard's decoded videos) that the local job encodes
    together, for executors that see a whole shard at once: batches identical to the local
    job's give identical tensors."""
    groups, current, frames = [], [], 0
    target = group_target(batch_size)
    for position, count in enumerate(frame_counts):
        current.append(position)
        frames += count
        if frames >= target:
            groups.append(current)
            current, frames = [], 0
    if current:
        groups.append(current)
    return groups


def encode_visual_group(backbone, medias: list[DecodedMedia], batch_size: int) -> list[np.ndarray]:
    """Each video's (F, 1 + P, D_v) tokens, its frames batched with the group's."""
    visual = backbone.encode(np.concatenate([media.frames for media in medias]), batch_size=batch_size)
    bounds = np.cumsum([0] + [len(media.frames) for media in medias])
    return [visual[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


def encode_audio_group(backbone, medias: list[DecodedMedia], batch_size: int) -> list[np.ndarray]:
    """Each video's (T, D_a) tokens; audio windows are batched a quarter as many as frames."""
    return backbone.encode([media.audio for media in medias], batch_size=max(1, batch_size // 4))


def _new_row(vid: str, path: Path) -> dict[str, Any]:
    try:
        stat = os.stat(path)
    except OSError as error:
        row = empty_row(vid, str(Path(path).resolve()), 0, 0.0)
        row.update(status=MISSING, error=f"cannot read file: {error.strerror}")
        return row
    return empty_row(vid, str(Path(path).resolve()), stat.st_size, stat.st_mtime)


def with_media(row: dict[str, Any], media: DecodedMedia, token_rate: float, fps: float) -> dict[str, Any]:
    """The manifest row of a decoded video, before its tokens are placed in a shard."""
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
