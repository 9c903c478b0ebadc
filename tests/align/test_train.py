"""Windows, sampling, the training loop, exact resume and checkpoints, through the Python API."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from avfeat.align import data, streaming
from avfeat.align.checkpoint import load_checkpoint
from avfeat.align.plots import attention_map
from avfeat.align.config import RunOptions, TrainConfig
from avfeat.align.train import train
from avfeat.data.cache import Cache
from avfeat.core.errors import CheckpointError

CONFIG = dict(window=1.0, dim=16, batch_size=3, passes_per_epoch=2, epochs=4, lr=1e-2, val_fraction=0.25, val_windows=3)


def run(cache, out, options=None, **overrides):
    return train(cache, out, TrainConfig(**{**CONFIG, **overrides}), options or RunOptions(quiet=True, device="cpu"), log=lambda _: None)


def test_split_is_deterministic_by_video_and_seeded():
    ids = [f"v{i}" for i in range(20)]
    train_ids, val_ids = data.split_videos(ids, 0.2, seed=3)
    assert len(val_ids) == 4 and sorted(train_ids + val_ids) == sorted(ids)
    assert data.split_videos(list(reversed(ids)), 0.2, seed=3) == (train_ids, val_ids)
    assert data.split_videos(ids, 0.2, seed=4)[1] != val_ids


def test_plan_has_distinct_videos_per_batch_and_far_enough_shifts(small_cache):
    cache = Cache(small_cache)
    ids = [r.video_id for r in cache.records(status="ok")]
    _, table = data.check_window(cache, ids, 1.0)
    plan = data.epoch_plan(table, list(range(len(ids))), 4, passes=3, min_shift=1.0, generator=torch.Generator().manual_seed(0))
    assert plan.windows.shape == (6, 4)
    for row, shifted in zip(plan.windows.tolist(), plan.shifted.tolist()):
        assert len({table.video[w] for w in row}) == 4
        for w, s in zip(row, shifted):
            assert s >= 0 and table.video[s] == table.video[w] and abs(table.start[s] - table.start[w]) >= 1.0 - 1e-6
    again = data.epoch_plan(table, list(range(len(ids))), 4, passes=3, min_shift=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plan.windows, again.windows)


def test_memory_and_streamed_batches_are_identical(small_cache):
    cache = Cache(small_cache)
    ids = [r.video_id for r in cache.records(status="ok")]
    geometry, table = data.check_window(cache, ids, 1.0)
    plan = data.epoch_plan(table, list(range(len(ids))), 4, passes=2, min_shift=1.0, generator=torch.Generator().manual_seed(1))
    memory = list(data.MemoryWindows(cache, table, torch.device("cpu")).batches(plan.windows))
    stream = list(streaming.StreamWindows(small_cache, table, torch.device("cpu"), workers=1).batches(plan.windows))
    assert len(memory) == len(stream) == 4
    for (ma, mv), (sa, sv) in zip(memory, stream):
        assert ma.shape == (4, geometry.audio_tokens, cache.config.audio_dim)
        assert mv.shape == (4, geometry.frames, cache.config.visual_tokens, cache.config.visual_dim)
        assert torch.equal(ma, sa) and torch.equal(mv, sv)
    w = int(plan.windows[0, 0])  # and the window is the right span of the right video
    vid = table.video_ids[table.video[w]]
    np.testing.assert_array_equal(memory[0][1][0].numpy(), cache.visual_tokens(vid)[table.frame[w] : table.frame[w] + geometry.frames])


@pytest.mark.acceptance
def test_a_short_run_lowers_the_loss_and_writes_a_loadable_checkpoint(small_cache, tmp_path):
    result = run(small_cache, tmp_path / "heads", epochs=6)
    losses = [r["train_loss"] for r in result.history]
    assert result.in_memory and len(losses) == 6
    assert losses[-1] < 0.8 * losses[0], losses

    checkpoint = load_checkpoint(tmp_path / "heads")
    assert not checkpoint.heads.training
    assert checkpoint.window == 1.0 and checkpoint.hop == 0.5 and checkpoint.aggregation == "max-mean"
    assert checkpoint.cache_fingerprint == Cache(small_cache).fingerprint()
    assert len(checkpoint.fingerprint) == 16
    config = json.loads((tmp_path / "heads" / "config.json").read_text())
    assert set(config) >= {"heads", "window", "hop", "cache", "training", "split", "avfeat_version"}
    assert config["cache"]["audio_model"] == "random:hubert-tiny" and len(config["split"]["val_videos"]) == 2
    # how the tokens were made, for queries to make theirs the same way (index/query.py Backbones)
    assert config["cache"]["decode_mode"] == "exact" and config["cache"]["compute_dtype"] == "float32"
    cache = Cache(small_cache)
    vid = cache.records(status="ok")[0].video_id
    projected = checkpoint.heads.project_audio(torch.from_numpy(cache.audio_tokens(vid)).float())
    assert projected.shape[-1] == 16 and torch.allclose(projected.norm(dim=-1), torch.ones(1))
    lines = (tmp_path / "heads" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert set(json.loads(lines[-1])["val"]["a2v"]) == {"R@1", "R@5", "R@10", "median_rank"}
    assert (tmp_path / "heads" / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("temporal_negatives", [False, True])
def test_resume_continues_with_the_same_losses(small_cache, tmp_path, temporal_negatives):
    full = run(small_cache, tmp_path / "full", temporal_negatives=temporal_negatives)
    first = run(small_cache, tmp_path / "split", RunOptions(quiet=True, device="cpu", stop_after=2), temporal_negatives=temporal_negatives)
    rest = run(small_cache, tmp_path / "split", RunOptions(quiet=True, device="cpu", resume=True), temporal_negatives=temporal_negatives)
    assert len(first.losses) == len(rest.losses) == len(full.losses) // 2
    assert first.losses + rest.losses == full.losses  # bit for bit
    split, whole = (_heads_file(tmp_path / name) for name in ("split", "full"))
    assert split[0].keys() == whole[0].keys() and all(torch.equal(split[0][k], whole[0][k]) for k in split[0])  # bit for bit
    assert split[1] == whole[1]  # the same config, but for each folder's own random output id
    assert [r["epoch"] for r in rest.history] == [1, 2, 3, 4]


def _heads_file(folder):
    """heads.safetensors' tensors and its metadata, less the folder's random output id."""
    from safetensors import safe_open

    with safe_open(folder / "heads.safetensors", framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = {key: value for key, value in (handle.metadata() or {}).items()}
    config = json.loads(metadata.pop("config", "{}"))
    config.pop("output_id", None)
    return tensors, {**metadata, "config": config}


def test_streaming_from_hdf5_trains_exactly_like_memory(small_cache, tmp_path):
    memory = run(small_cache, tmp_path / "memory", epochs=2)
    stream = run(small_cache, tmp_path / "stream", RunOptions(quiet=True, device="cpu", memory_limit=0, workers=1), epochs=2)
    assert memory.in_memory and not stream.in_memory
    assert stream.losses == memory.losses
    assert stream.history[-1]["val"] == memory.history[-1]["val"]


@pytest.mark.parametrize("aggregation", ["mean-pool", "cls"])
def test_other_aggregations_train(small_cache, tmp_path, aggregation):
    result = run(small_cache, tmp_path / aggregation, epochs=2, aggregation=aggregation, head="mlp")
    assert all(np.isfinite(result.losses)) and load_checkpoint(tmp_path / aggregation).aggregation == aggregation


def test_load_checkpoint_errors(small_cache, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    run(small_cache, tmp_path / "heads", epochs=1)
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "heads", broken)
    # An earlier version's heads file (no config inside): its config is config.json's.
    save_file(load_file(broken / "heads.safetensors"), broken / "heads.safetensors")
    config = json.loads((broken / "config.json").read_text())
    config["heads"]["dim"] = 32
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_checkpoint(broken)
    (broken / "heads.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no heads.safetensors"):
        load_checkpoint(broken)


def test_attention_map_draws_over_the_frame_or_alone(small_cache, tmp_path):
    run(small_cache, tmp_path / "heads", epochs=1)
    checkpoint = load_checkpoint(tmp_path / "heads")
    cache = Cache(small_cache)
    vid = cache.records(status="ok")[0].video_id
    assert attention_map(checkpoint, cache, vid, 1.0, tmp_path / "map.png") == []
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"
    from avfeat.align.plots import decode_frame

    frame = decode_frame(cache.record(vid).path, 1.0, cache.config.frame_geometry)
    assert frame.shape == (*cache.config.frame_geometry["crop"], 3)
