"""The one time rule: a window means the same tokens in training, index, rerank, eval, attention
maps and ``ID@START-END`` queries, also when the audio does not start on a token boundary."""

import numpy as np
import pytest
import torch

from avfeat.align.data import MemoryWindows, WindowTable
from avfeat.align.windows import WindowGeometry, cache_windows
from avfeat.data.cache import Cache
from avfeat.data.shards import ShardWriter, new_record, open_for_writing
from avfeat.data.records import BackboneSpec, VideoRecord, nearest_index
from avfeat.core.errors import BackboneMismatchError
from avfeat.index.query import cached_query

AUDIO_START = 0.013  # not a multiple of the 20 ms token period
RATE, FPS, TOKENS, FRAMES = 50.0, 2.0, 400, 14


@pytest.fixture
def cache(tmp_path):
    """One video whose audio token k holds the value k and frame f the value f."""
    config = {"audio_model": "random:hubert-tiny", "visual_model": "random:dinov2-tiny", "audio_layer": -1, "visual_layer": -1,
              "fps": FPS, "audio_token_rate": RATE, "audio_dim": 2, "visual_dim": 2, "visual_tokens": 3}
    layout = open_for_writing(tmp_path, config)
    with ShardWriter(layout, 0, audio_dim=2, visual_tokens_per_frame=3, visual_dim=2, attrs={}, dtype="float32") as writer:
        record = new_record("v", "/videos/v.mp4", 1, 1.0).with_(audio_start=AUDIO_START, audio_rate=RATE, fps=FPS, duration=8.0)
        audio = np.repeat(np.arange(TOKENS, dtype=np.float32)[:, None], 2, axis=1)
        visual = np.repeat(np.arange(FRAMES, dtype=np.float32)[:, None, None], 3, axis=1).repeat(2, axis=2)
        writer.add(record, audio, visual, np.arange(FRAMES) / FPS + 0.25)
    return Cache(tmp_path)


def expected_first_token(seconds: float) -> int:
    """Computed apart from the code under test: the token whose start time is nearest."""
    starts = AUDIO_START + np.arange(TOKENS) / RATE
    return int(np.argmin(np.abs(starts - seconds)))


def test_every_stage_cuts_the_same_tokens(cache):
    geometry = WindowGeometry(seconds=1.5, audio_rate=RATE, fps=FPS)
    windows = cache_windows(cache, geometry)  # what index builds and eval score
    assert len(windows) == FRAMES - geometry.frames + 1
    table = WindowTable.build(cache, ["v"], geometry)  # what training samples
    memory = MemoryWindows(cache, table, torch.device("cpu"))
    batch_audio, batch_visual = memory.gather(torch.arange(len(table)))
    read_audio, read_visual = cache.read_windows(windows, geometry)  # what streamed training reads
    for k, window in enumerate(windows):
        first = expected_first_token(window.start)
        want = np.arange(first, first + 75, dtype=np.float32)
        assert window.audio == first == table.audio[k]
        np.testing.assert_array_equal(batch_audio[k, :, 0].numpy(), want)
        np.testing.assert_array_equal(read_audio[k, :, 0], want)
        # rerank and attention maps read by time
        np.testing.assert_array_equal(cache.audio_tokens("v", window.start, window.end)[:, 0], want)
        frames = np.arange(window.frame, window.frame + geometry.frames, dtype=np.float32)
        np.testing.assert_array_equal(batch_visual[k, :, 0, 0].numpy(), frames)
        np.testing.assert_array_equal(read_visual[k, :, 0, 0], frames)
        np.testing.assert_array_equal(cache.visual_tokens("v", window.start, window.end)[:, 0, 0], frames)
        # an ID@START-END query of the window
        query = cached_query(cache, f"v@{window.start}-{window.end}")
        np.testing.assert_array_equal(query.audio[:, 0], want)
        assert query.audio_start == pytest.approx(AUDIO_START + first / RATE - window.start)


def test_query_times_accept_minutes_and_refuse_past_the_end(cache):
    query = cached_query(cache, "v@0:01-0:02.5")
    np.testing.assert_array_equal(query.audio[:, 0], np.arange(expected_first_token(1.0), expected_first_token(1.0) + 75))
    from avfeat.core.errors import QueryError

    with pytest.raises(QueryError, match="ends after the video"):
        cached_query(cache, "v@7-9")
    with pytest.raises(QueryError, match="did you mean v"):
        cached_query(cache, "vv@1-2")


@pytest.mark.parametrize("seconds, rate, index", [(0.97, 50, 49), (0.969, 50, 48), (1.0, 2, 2), (0.75, 2, 2), (0.7499, 2, 1)])
def test_halves_round_up_whatever_the_float_error(seconds, rate, index):
    assert nearest_index(seconds, rate) == index


def test_span_holds_the_token_count_of_its_length():
    record = VideoRecord("v", "p", audio_start=0.03, audio_rate=50.0, audio_length=500)
    for start in np.arange(0.1, 8.0, 0.37):  # inside the video: no clipping at the start
        first, stop = record.audio_span(start, start + 2.0)
        assert stop - first == 100 or stop == 500


def test_backbone_mismatch_is_one_error_naming_each_difference():
    a = BackboneSpec("random:hubert-tiny", "random:dinov2-tiny", audio_dim=32, visual_dim=32)
    b = BackboneSpec("random:hubert-tiny", "random:dinov2-small", audio_dim=32, visual_dim=384)
    a.check_same(BackboneSpec.from_dict(a.to_dict()), "heads h", "cache c")
    with pytest.raises(BackboneMismatchError, match="visual_model.*visual_dim: heads 32, cache 384"):
        a.check_same(b, "heads h", "cache c")
