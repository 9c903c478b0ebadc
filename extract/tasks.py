"""The units of work that every runner of an extraction (the local job and the Ray pipeline)
shares, so that both cut shards, decode, group and record videos alike and give identical caches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avfeat.data.layout import CacheLayout
from avfeat.data.records import VideoRecord
from avfeat.extract.media import DecodedMedia, DecodeSpec, decode


@dataclass
class DecodeTask:
    """One video for a decode worker."""

    record: VideoRecord
    spec: DecodeSpec


def decode_task(task: DecodeTask) -> DecodedMedia:
    return decode(task.record.path, task.spec, start=task.record.segment_start, end=task.record.segment_end)


def plan_shards(layout: CacheLayout, todo: list[VideoRecord], shard_size: int) -> list[tuple[int, list[VideoRecord]]]:
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


def with_media(record: VideoRecord, media: DecodedMedia, token_rate: float, fps: float) -> VideoRecord:
    """The record of a decoded video, before its tokens are placed in a shard."""
    return record.with_(
        duration=float(media.duration),
        audio_start=float(media.audio_start),
        audio_rate=float(token_rate),
        fps=float(fps),
        width=int(media.width),
        height=int(media.height),
        source_sample_rate=int(media.source_sample_rate),
        audio_level=audio_level(media.audio),
    )


# The quietest level recorded: digital silence (all zeros) reads as this, not as -inf.
SILENCE_FLOOR_DB = -120.0
# Silent: the decoded sound's RMS below this (dBFS), for the audit and sync alike. Speech and
# music sit near -20 to -30; a room with nobody in it near -50 to -60.
SILENT_DB = -60.0


def audio_level(waveform: np.ndarray) -> float:
    """RMS of a waveform in dB relative to full scale. The tokens cannot tell: HuBERT's front
    end normalises its input, so near-silence comes out of it looking like noise."""
    if len(waveform) == 0:
        return SILENCE_FLOOR_DB
    rms = float(np.sqrt(np.mean(np.square(waveform, dtype=np.float64))))
    return max(SILENCE_FLOOR_DB, 20.0 * np.log10(max(rms, 1e-12)))
