"""Files of an earlier avfeat still load: a cache, heads and an index written before configs had
versions (and before --storage, --pool-patches, --decode-mode and compute dtypes were recorded)
are read as what they hold: float16, unpooled, exact frames, computed as `--dtype auto` would."""

from __future__ import annotations

import json
import shutil

import numpy as np
from safetensors.torch import load_file

from avfeat.align.checkpoint import HEADS_FILE, load_checkpoint, save_heads
from avfeat.align.heads import AVHeads, HeadConfig
from avfeat.data.cache import Cache
from avfeat.extract.encoder import resolve_dtype
from avfeat.index.search import Searcher
from avfeat.testing.runner import run_avfeat

# What cache.json and the "cache" sections held before those settings were recorded.
LATER_KEYS = ("storage", "pool_patches", "decode_mode", "storage_dtype", "compute_dtype", "config_version", "videos_fingerprint")


def _strip(values: dict) -> dict:
    return {k: v for k, v in values.items() if k not in LATER_KEYS}


def _make_old(cache, heads, index, root):
    """Copies of the three folders rewritten as the first avfeat wrote them (fingerprints kept
    consistent: they hash cache.json as written)."""
    old = {name: root / name for name in ("cache", "heads", "index")}
    for name, source in (("cache", cache), ("heads", heads), ("index", index)):
        shutil.copytree(source, old[name])
    config_path = old["cache"] / "cache.json"
    config_path.write_text(json.dumps({**_strip(json.loads(config_path.read_text())), "avfeat_version": "0.0.1"}))
    with Cache(old["cache"]) as store:
        fingerprint = store.fingerprint()
    heads_config = json.loads((old["heads"] / "config.json").read_text())
    heads_config["cache"] = {**_strip(heads_config["cache"]), "path": str(old["cache"]), "fingerprint": fingerprint}
    heads_config.pop("config_version")
    (old["heads"] / "config.json").write_text(json.dumps(heads_config))
    model = AVHeads(HeadConfig.from_dict(heads_config["heads"]))
    model.load_state_dict(load_file(str(old["heads"] / HEADS_FILE)))
    heads_fingerprint = save_heads(old["heads"], model, heads_config)
    meta_path = old["index"] / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["cache"] = {**_strip(meta["cache"]), "path": str(old["cache"]), "fingerprint": fingerprint}
    meta["heads"].update(path=str(old["heads"]), fingerprint=heads_fingerprint, trained_on_cache=fingerprint)
    meta_path.write_text(json.dumps(meta))
    return old


def test_a_cache_heads_and_index_of_an_earlier_version_load_and_answer(cache, heads, index, tmp_path):
    old = _make_old(cache, heads, index, tmp_path)
    with Cache(old["cache"]) as store, Cache(cache) as current:
        assert (store.config.storage, store.config.pool_patches, store.config.decode_mode, store.config.config_version) == ("float16", 1, "exact", 0)
        record = store.records(status="ok")[0]
        np.testing.assert_array_equal(store.read_audio(record), current.read_audio(record.video_id))
    checkpoint = load_checkpoint(old["heads"])
    assert checkpoint.config.config_version == 0 and checkpoint.config.cache.compute_dtype is None
    assert not checkpoint.config.cache.pool_patches_recorded  # queries infer pooling from the patch grid
    assert "float16" in run_avfeat("info", old["cache"], check=0).stdout

    span = f"{record.video_id}@0-1.5"
    now = run_avfeat("search", index, span, "-k", "3", check=0).stdout
    then = run_avfeat("search", old["index"], span, "-k", "3", check=0).stdout
    assert then.split("\n")[1:] == now.split("\n")[1:]  # the same hits (the header names the index)
    # A query file: the backbones rebuilt from the old record, which did not say how the tokens
    # were computed, so as `--dtype auto` does on this CPU; exact frames, unpooled, as the cache.
    searcher = Searcher(old["index"])
    query = searcher.tokens(record.path)
    assert searcher.backbones.encoder.dtype == resolve_dtype("auto", "cpu")
    with Cache(cache) as current:
        np.testing.assert_array_equal(query.frame_times, current.frame_times(record.video_id))
        assert query.visual.shape == current.read_frames(record.video_id).shape
