"""Property: any JSON value as a cache's cache.json opens (``Cache``) to a valid CacheConfig or
is the one CacheError/InputError naming the file, never another exception; `avfeat info` on it
is a table or one error line, never a traceback."""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from avfeat.core.errors import CacheError, InputError
from avfeat.data.cache import Cache
from avfeat.data.codecs import STORAGES
from avfeat.data.configs import DECODE_MODES, POOL_FACTORS, CacheConfig, spec_problem
from avfeat.data.layout import CONFIG_FILE
from avfeat.data.summary import cache_summary
from avfeat.testing.runner import one_line_error, run_avfeat

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
# A cache.json as `avfeat extract` writes it.
_GOOD = {
    "audio_model": "random:hubert-tiny", "visual_model": "random:dinov2-tiny", "audio_layer": -1, "visual_layer": -1,
    "fps": 2.0, "storage_dtype": "float16", "storage": "float16", "pool_patches": 1, "decode_mode": "exact",
    "sample_rate": 16000, "audio_token_rate": 50.0, "audio_dim": 32, "visual_dim": 32, "visual_tokens": 65,
    "visual_grid": [8, 8], "frame_geometry": {"crop": [112, 112], "shortest_edge": 128, "size": None},
    "compute_dtype": "float32", "avfeat_version": "0.1.0", "config_version": 1,
}
_PROPS = settings(max_examples=200, deadline=None, derandomize=True)


def _open(folder: Path) -> CacheConfig | None:
    """The config the cache opens with, or None after checking the one error it raised."""
    try:
        return Cache(folder).config
    except (CacheError, InputError) as error:
        assert str(folder) in str(error) and "\n" not in str(error), str(error)
        return None


def _check(value) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / CONFIG_FILE).write_text(json.dumps(value))
        config = _open(folder)
        if config is None:
            return
        values = config.to_dict()
        assert spec_problem(values, CacheConfig) is None, values
        assert config.storage in STORAGES and config.decode_mode in DECODE_MODES and config.pool_patches in POOL_FACTORS
        assert config.storage_dtype in ("float16", "float32") and config.audio_model and config.visual_model
        assert all(math.isfinite(getattr(config, key)) and getattr(config, key) > 0 for key in ("fps", "audio_token_rate"))
        assert isinstance(cache_summary(folder), dict)
        CacheConfig.from_dict(values, str(folder))  # what was read writes back and reads again


@_PROPS
@given(value=_JSON)
def test_any_json_value_as_cache_json_opens_or_is_one_error(value):
    _check(value)


@_PROPS
@given(
    dropped=st.sets(st.sampled_from(sorted(_GOOD))),
    changed=st.dictionaries(st.sampled_from(sorted(_GOOD) + ["other"]), _JSON, max_size=3),
)
def test_a_cache_json_with_keys_dropped_or_changed_opens_or_is_one_error(dropped, changed):
    value = {key: item for key, item in copy.deepcopy(_GOOD).items() if key not in dropped}
    _check({**value, **changed})


def test_avfeat_info_on_a_bad_cache_json_is_one_line(tmp_path):
    bad = ({**_GOOD, "visual_grid": 5}, {**_GOOD, "fps": "fast"}, {**_GOOD, "storage": "int4"}, {**_GOOD, "frame_geometry": []}, [1], "x")
    for number, value in enumerate(bad):
        folder = tmp_path / str(number)
        folder.mkdir()
        (folder / CONFIG_FILE).write_text(json.dumps(value))
        result = run_avfeat("info", folder)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert str(folder) in one_line_error(result), result.stderr
    good = tmp_path / "good"
    good.mkdir()
    (good / CONFIG_FILE).write_text(json.dumps(_GOOD))
    assert run_avfeat("info", good, check=0).stdout.strip()
