"""Sync and the audit walk a cached video in time chunks (``sync.CHUNK_SECONDS``): the same
results as holding the whole video, with a chunk forced small, and never a whole video read."""

from __future__ import annotations

import numpy as np
import pytest

from avfeat.align.checkpoint import load_checkpoint
from avfeat.data.cache import Cache
from avfeat.index import sync
from avfeat.index.audit import measure
from avfeat.index.sync import sync_cached, sync_tokens

# At 5 fps, 0.8 s is 4 frames: the tiny 3 s videos (15 frames) are not a multiple of it.
SMALL = 0.8


def _whole(store, record, heads, max_offset):
    """Today's path: the whole video's tokens in memory, one chunk."""
    return sync_tokens(heads, store.read_audio(record), record.audio_start, record.audio_rate, store.read_frames(record),
                       store.frame_times(record), record.fps, max_offset)


def _same(a, b):
    assert np.allclose(a.curve, b.curve, rtol=1e-6, atol=1e-9, equal_nan=True)
    assert a.offset == pytest.approx(b.offset, rel=1e-6, abs=1e-9)
    assert a.confidence == pytest.approx(b.confidence, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("max_offset", [0.5, 2.0])
def test_sync_in_small_chunks_equals_the_whole_video(cache, heads, monkeypatch, max_offset):
    store, model = Cache(cache), load_checkpoint(heads).heads.eval()
    records = store.records(status="ok")
    assert all(record.visual_length % round(SMALL * record.fps) for record in records)
    whole = [_whole(store, record, model, max_offset) for record in records]
    default = [sync_cached(store, record.video_id, model, max_offset) for record in records]  # shorter than one chunk
    monkeypatch.setattr(sync, "CHUNK_SECONDS", SMALL)
    small = [sync_cached(store, record.video_id, model, max_offset) for record in records]
    for a, b, c in zip(whole, default, small):
        _same(a, b)
        _same(a, c)


def _largest_reads(store, monkeypatch):
    """Record the most frames and audio tokens any one read of ``store`` returns."""
    largest = {"audio": 0, "frames": 0}
    for name, key in (("read_audio", "audio"), ("read_frames", "frames")):
        original = getattr(store, name)

        def reading(*args, _original=original, _key=key, **kwargs):
            rows = _original(*args, **kwargs)
            largest[_key] = max(largest[_key], len(rows))
            return rows

        monkeypatch.setattr(store, name, reading)
    return largest


def test_sync_never_reads_a_whole_cached_video(cache, heads, monkeypatch):
    store, model = Cache(cache), load_checkpoint(heads).heads.eval()
    record = store.records(status="ok")[0]
    monkeypatch.setattr(sync, "CHUNK_SECONDS", SMALL)
    largest = _largest_reads(store, monkeypatch)
    sync_cached(store, record.video_id, model, max_offset=0.2)
    assert 0 < largest["frames"] < record.visual_length
    assert 0 < largest["audio"] < record.audio_length


def _measures(store, model):
    records = store.records(status="ok")
    return measure._measure_all(store, model, records, 1.0, 0, None)


def test_audit_measures_in_small_chunks_equal_the_whole_video(cache, heads, monkeypatch):
    store, model = Cache(cache), load_checkpoint(heads).heads.eval()
    before, skipped, null = _measures(store, model)
    monkeypatch.setattr(sync, "CHUNK_SECONDS", SMALL)
    largest = _largest_reads(store, monkeypatch)
    after, skipped_after, null_after = _measures(store, model)
    assert skipped == skipped_after and len(before) == len(after) > 0
    for a, b in zip(before, after):
        assert a.record.video_id == b.record.video_id
        for name in ("correspondence", "peak", "offset", "sync_confidence", "visual_spread"):
            assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-6, abs=1e-9), name
        assert np.allclose(a.frame_scores, b.frame_scores, rtol=1e-6, atol=1e-9, equal_nan=True)
    assert np.allclose(np.array(null), np.array(null_after), rtol=1e-6, atol=1e-9)
    # A video's own measure reads it a chunk at a time.
    record = store.records(status="ok")[0]
    largest.update(audio=0, frames=0)
    tokens = measure.Tokens.read(store, record)
    measure.lag_zero(model, tokens, tokens, 0.2)  # a band of ±0.4 s: less than the video's audio
    assert 0 < largest["frames"] < record.visual_length and 0 < largest["audio"] < record.audio_length


def test_audit_tokens_read_as_whole_arrays_give_the_same_measure(cache, heads, monkeypatch):
    store, model = Cache(cache), load_checkpoint(heads).heads.eval()
    record = store.records(status="ok")[1]
    viewed = measure.Tokens.read(store, record)
    held = measure.Tokens(store.read_audio(record), record.audio_start, record.audio_rate, store.read_frames(record),
                          store.frame_times(record), record.fps)
    monkeypatch.setattr(sync, "CHUNK_SECONDS", SMALL)
    a, b = measure.lag_zero(model, viewed, viewed, 1.0), measure.lag_zero(model, held, held, 1.0)
    assert a[0] == pytest.approx(b[0], rel=1e-6) and a[1] == pytest.approx(b[1], rel=1e-6)
    assert np.allclose(a[2], b[2], rtol=1e-6, atol=1e-9, equal_nan=True)
    assert measure.spread(viewed.first_tokens()) == pytest.approx(measure.spread(held.frames[:, 0]), rel=1e-6)
    assert np.array_equal(viewed.first_tokens(chunk=4), held.frames[:, 0])
