"""Property: any JSON as a checkpoint's config.json reads (``read_heads_config``) to a valid
HeadsConfig or is the one CheckpointError naming the file, never another exception."""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from avfeat.align.checkpoint import CONFIG_FILE, HeadsConfig, read_heads_config
from avfeat.core.errors import CheckpointError

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
# A config.json as train-head writes it (the fields every reader relies on).
_GOOD = {
    "heads": {"audio_dim": 32, "visual_dim": 32, "dim": 16, "head": "linear", "aggregation": "max-mean", "init_temperature": 0.07},
    "window": 1.0, "hop": 0.5,
    "cache": {"audio_dim": 32, "audio_layer": -1, "audio_model": "random:hubert-tiny", "audio_token_rate": 50.0, "compute_dtype": "float32",
              "config_version": 1, "decode_mode": "exact", "fingerprint": "97d68bc6d44fe90e", "fps": 5.0,
              "frame_geometry": {"crop": [112, 112], "shortest_edge": 128, "size": None}, "path": "/data/cache", "pool_patches": 1,
              "sample_rate": 16000, "storage": "float16", "storage_dtype": "float16", "visual_dim": 32, "visual_grid": [8, 8],
              "visual_layer": -1, "visual_model": "random:dinov2-tiny", "visual_tokens": 65},
    "training": {}, "split": {}, "avfeat_version": "0.1.0", "config_version": 1,
}
_FIELDS = [("heads",), ("window",), ("hop",), ("cache",), ("training",), ("split",), ("config_version",), ("avfeat_version",),
           ("heads", "dim"), ("heads", "audio_dim"), ("heads", "aggregation"), ("heads", "init_temperature"), ("heads", "head"), ("cache", "fingerprint"),
           ("cache", "audio_dim"), ("cache", "fps"), ("cache", "audio_token_rate"), ("cache", "frame_geometry"), ("cache", "storage")]
_PROPS = settings(max_examples=200, deadline=None, derandomize=True)


def _read(config) -> None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / CONFIG_FILE).write_text(json.dumps(config))
        try:
            read = read_heads_config(Path(folder))
        except CheckpointError as error:
            assert folder in str(error) and "\n" not in str(error)
            return
        assert isinstance(read, HeadsConfig)
        assert math.isfinite(read.window) and read.window > 0
        assert read.hop is None or (math.isfinite(read.hop) and read.hop > 0)
        assert read.heads.dim > 0 and read.heads.audio_dim > 0 and read.heads.visual_dim > 0
        assert isinstance(read.training, dict) and isinstance(read.split, dict)
        HeadsConfig.from_dict(read.to_dict())  # what was read writes back and reads again


@_PROPS
@given(value=_JSON)
def test_any_json_value_as_config_json_reads_or_is_one_error(value):
    _read(value)


@_PROPS
@given(field=st.sampled_from(_FIELDS), value=_JSON)
def test_a_good_config_json_with_any_field_replaced_reads_or_is_one_error(field, value):
    config = copy.deepcopy(_GOOD)
    target = config
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    _read(config)


def test_the_good_config_reads():
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / CONFIG_FILE).write_text(json.dumps(_GOOD))
        assert read_heads_config(Path(folder)).heads.dim == 16
