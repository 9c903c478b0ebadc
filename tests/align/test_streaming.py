"""Training from disk: streamed batches are the in-memory batches, bit for bit, for float16 and
int8 caches, and a streaming run trains exactly like an in-memory one."""

import pytest
import torch

from avfeat.align import data, streaming
from avfeat.align.config import RunOptions, TrainConfig
from avfeat.align.train import train
from avfeat.align.windows import Window
from avfeat.data.cache import Cache
from avfeat.testing.runner import TINY_MODELS, run_avfeat


@pytest.fixture(scope="module")
def int8_cache(small_cache, tmp_path_factory):
    """The small cache's videos extracted again with ``--storage int8``."""
    cache = tmp_path_factory.mktemp("stream_int8") / "cache"
    corpus = small_cache.parent / "corpus"
    run_avfeat("extract", corpus, "--out", cache, *TINY_MODELS, "--fps", 4, "--quiet", "--workers", 1, "--storage", "int8", check=0)
    return cache


@pytest.fixture(scope="module")
def two_shard_cache(small_cache, tmp_path_factory):
    """The small cache's videos over three shards, so a batch reads from several files."""
    cache = tmp_path_factory.mktemp("stream_shards") / "cache"
    run_avfeat("extract", small_cache.parent / "corpus", "--out", cache, *TINY_MODELS, "--fps", 4, "--quiet", "--workers", 1, "--shard-size", 3, check=0)
    assert len(list((cache / "shards").glob("*.h5"))) == 3
    return cache


def _plan_ids(cache, seconds=1.0, batch=4, passes=3, temporal=True):
    ids = [r.video_id for r in cache.records(status="ok")]
    _, table = data.check_window(cache, ids, seconds)
    batch = min(batch, len(ids))
    plan = data.epoch_plan(table, list(range(len(ids))), batch, passes=passes, min_shift=0.5, generator=torch.Generator().manual_seed(7))
    return table, data.plan_ids(plan, temporal)


@pytest.mark.parametrize("which", ["float16", "int8", "shards"])
def test_streamed_batches_equal_memory_gathers(which, small_cache, int8_cache, two_shard_cache):
    path = {"float16": small_cache, "int8": int8_cache, "shards": two_shard_cache}[which]
    cache = Cache(path)
    if which == "int8":
        assert cache.config.storage == "int8"
    table, ids = _plan_ids(cache)
    memory = data.MemoryWindows(cache, table, torch.device("cpu"))
    dataset = streaming.StreamBatches(path, table, ids)
    for step in range(len(dataset)):
        audio, visual = dataset[step]
        ma, mv = memory.gather(ids[step])
        assert audio.dtype == ma.dtype == torch.float16
        assert torch.equal(audio, ma) and torch.equal(visual, mv)
        # and the cache's own per-window reads agree
        windows = [Window(table.video_ids[table.video[w]], int(table.frame[w]), int(table.audio[w]), 0.0, 0.0) for w in ids[step].tolist()]
        ca, cv = cache.read_windows(windows, table.geometry)
        assert torch.equal(audio, torch.from_numpy(ca)) and torch.equal(visual, torch.from_numpy(cv))


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_through_workers_equal_memory(small_cache, workers):
    cache = Cache(small_cache)
    table, ids = _plan_ids(cache, passes=2)
    memory = list(data.MemoryWindows(cache, table, torch.device("cpu")).batches(ids))
    source = streaming.StreamWindows(small_cache, table, torch.device("cpu"), workers=workers)
    for _ in range(2):  # a second epoch reads the same batches again
        stream = list(source.batches(ids))
        assert len(stream) == len(memory)
        for (ma, mv), (sa, sv) in zip(memory, stream):
            assert torch.equal(ma, sa) and torch.equal(mv, sv)


def test_a_truncated_shard_is_a_cache_error(two_shard_cache, tmp_path):
    import shutil

    from avfeat.core.errors import CacheError

    copy = tmp_path / "cache"
    shutil.copytree(two_shard_cache, copy)
    cache = Cache(copy)
    table, ids = _plan_ids(cache, temporal=False)
    shard = sorted((copy / "shards").glob("*.h5"))[0]
    shard.write_bytes(shard.read_bytes()[:-4096])
    with pytest.raises(CacheError):
        for step in range(len(ids)):
            streaming.StreamBatches(copy, table, ids)[step]


CONFIG = dict(window=1.0, dim=16, batch_size=3, passes_per_epoch=2, epochs=2, lr=1e-2, val_fraction=0.25, val_windows=3)


@pytest.mark.parametrize("temporal_negatives", [False, True])
def test_streaming_run_has_the_in_memory_losses(small_cache, tmp_path, temporal_negatives):
    config = TrainConfig(**CONFIG, temporal_negatives=temporal_negatives, min_shift=0.5)
    memory = train(small_cache, tmp_path / "memory", config, RunOptions(quiet=True, device="cpu"), log=lambda _: None)
    stream = train(small_cache, tmp_path / "stream", config, RunOptions(quiet=True, device="cpu", memory_limit=0, workers=2), log=lambda _: None)
    assert memory.in_memory and not stream.in_memory
    assert stream.losses == memory.losses  # same dtype (the cache's) on both paths: exact
    assert stream.history[-1]["val"] == memory.history[-1]["val"]


def test_two_passes_read_at_once_each_get_their_batches(small_cache):
    cache = Cache(small_cache)
    table, ids = _plan_ids(cache, passes=2)
    memory = list(data.MemoryWindows(cache, table, torch.device("cpu")).batches(ids))
    source = streaming.StreamWindows(small_cache, table, torch.device("cpu"), workers=1)
    first, second = source.batches(ids), source.batches(ids.flip(0))
    a = next(first)
    b = next(second)
    rest_first, rest_second = list(first), list(second)
    for (ma, mv), (sa, sv) in zip(memory, [a, *rest_first]):
        assert torch.equal(ma, sa) and torch.equal(mv, sv)
    for (ma, mv), (sa, sv) in zip(memory[::-1], [b, *rest_second]):
        assert torch.equal(ma, sa) and torch.equal(mv, sv)
    assert torch.equal(list(source.batches(ids))[0][1], memory[0][1])  # and the workers serve the next pass
