"""Files and queries an attacker or bit rot could hand avfeat: an index meta.json that is valid
JSON with wrong values, heads with NaN weights or cut short, and query vectors whose norm would
overflow. Each is one line (exit 1, or a 4xx) and never a traceback or silently wrong output."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load, save

from avfeat.core.errors import QueryError
from avfeat.index import Searcher
from avfeat.testing.runner import run_avfeat as avfeat


def _one_line_error(result, *parts):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("avfeat: error:"), result.stderr
    assert all(part in lines[0] for part in parts), result.stderr
    return lines[0]


# ---- meta.json: valid JSON, wrong values -----------------------------------------------------


def _set(meta, path, value):
    *parents, last = path.split(".")
    for key in parents:
        meta = meta[key]
    meta[last] = value


@pytest.mark.parametrize("field, value", [
    ("window", "abc"),
    ("window", float("nan")),
    ("window", -1.0),
    ("hop", float("nan")),
    ("dim", 64),
    ("dim", "32"),
    ("modalities", {}),
    ("heads.path", None),
    ("geometry", "1 s at 5 fps"),
    ("geometry.audio_rate", 0),
    ("aggregation", 5),
    ("modalities.audio.params", [1]),
    ("modalities.audio.count", -1),
    ("cache.fps", None),
    ("cache.frame_geometry", "128"),
])
def test_a_meta_json_with_wrong_values_is_one_line(index, corpus, tmp_path, field, value):
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    meta = json.loads((copy / "meta.json").read_text())
    _set(meta, field, value)
    (copy / "meta.json").write_text(json.dumps(meta))
    for extra in ([], ["--locate"]):
        result = avfeat("search", copy, corpus / "video_00000.mp4", "-k", 2, *extra)
        _one_line_error(result, str(copy / "meta.json"), field.rsplit(".", 1)[-1], "avfeat index --overwrite")


# ---- heads: NaN weights, a truncated file -------------------------------------------------------


def _heads_copy(heads, tmp_path):
    copy = tmp_path / "heads"
    shutil.copytree(heads, copy)
    return copy, copy / "heads.safetensors"


def _nan_heads(heads, tmp_path, value=float("nan")):
    copy, path = _heads_copy(heads, tmp_path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load(path.read_bytes())
    name = sorted(tensors)[-1]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = value
    path.write_bytes(save(tensors, metadata=metadata))
    return copy, path, name


def _commands(cache, corpus, index, heads, tmp_path):
    video = corpus / "video_00001.mp4"
    return {
        "index": ["index", cache, "--heads", heads, "--out", tmp_path / "new_index", "--quiet"],
        "search": ["search", index, video, "--heads", heads, "-k", 2],
        "sync": ["sync", video, "--heads", heads, "--max-offset", 1.0],
    }


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_heads_with_non_finite_weights_are_refused(cache, corpus, index, heads, tmp_path, value):
    copy, path, name = _nan_heads(heads, tmp_path, value)
    for command, args in _commands(cache, corpus, index, copy, tmp_path).items():
        _one_line_error(avfeat(*args), str(path), name, "NaN or infinite")
    assert not (tmp_path / "new_index" / "meta.json").exists()  # no all-NaN index written


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_a_truncated_heads_file_is_one_line(cache, corpus, index, heads, tmp_path, keep):
    copy, path = _heads_copy(heads, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    for command, args in _commands(cache, corpus, index, copy, tmp_path).items():
        _one_line_error(avfeat(*args), str(path), "truncated or damaged")


# ---- query vectors ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(index):
    pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
    from starlette.testclient import TestClient

    from avfeat.index.serve.app import create_app
    from avfeat.index.serve.service import Service

    service = Service(index, device="cpu")
    return TestClient(create_app(service)), service.searcher.meta["dim"]


def test_a_huge_vector_is_searched_by_its_direction(client):
    client, dim = client
    ones = client.post("/api/search", json={"vector": [1.0] * dim}, params={"k": 3})
    huge = client.post("/api/search", json={"vector": [1e308] * dim}, params={"k": 3})
    tiny = client.post("/api/search", json={"vector": [5e-324] * dim}, params={"k": 3})
    assert ones.status_code == huge.status_code == tiny.status_code == 200, huge.text
    expected = [(h["video_id"], h["start"], h["score"]) for h in ones.json()["hits"]]
    assert any(score != 0 for _, _, score in expected)
    for answer in (huge, tiny):
        assert [(h["video_id"], h["start"]) for h in answer.json()["hits"]] == [e[:2] for e in expected]
        np.testing.assert_allclose([h["score"] for h in answer.json()["hits"]], [e[2] for e in expected], atol=1e-5)


@pytest.mark.parametrize("vector", [[0.0], [float("inf")], [1e308, -float("inf")]])
def test_a_vector_without_a_direction_is_a_400(client, vector):
    client, dim = client
    values = (vector * dim)[:dim]
    response = client.post("/api/search", content=json.dumps({"vector": values}), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert list(response.json()) == ["error"] and "\n" not in response.json()["error"]


def test_search_vectors_refuses_non_finite_vectors(index):
    searcher = Searcher(index)
    dim = searcher.meta["dim"]
    for bad in (np.full((1, dim), 1e308), np.full((1, dim), np.nan)):  # 1e308 is inf as float32
        with pytest.raises(QueryError, match="finite"):
            searcher.search_vectors(bad, "visual", k=2)
