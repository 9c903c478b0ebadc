"""`avfeat search --server URL`: the same hits as a local search, asked of a running `avfeat
serve` without loading torch, transformers or FAISS here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from avfeat.data.cache import Cache
from avfeat.testing.runner import one_line_error
from avfeat.testing.runner import run_avfeat as avfeat
from avfeat.testing.servers import free_port, serve_index

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")


@pytest.fixture(scope="module")
def server(index):
    with serve_index(index) as url:
        yield url


@pytest.fixture(scope="module")
def video(cache):
    return Cache(cache).records()[0].video_id


def _same_hits(local: list, remote: list) -> None:
    assert [(h["rank"], h["video_id"], h["start"], h["end"]) for h in remote] == [(h["rank"], h["video_id"], h["start"], h["end"]) for h in local]
    assert all(abs(a["score"] - b["score"]) <= 1e-5 for a, b in zip(local, remote))
    assert all(set(a) == set(b) and a["metadata"] == b["metadata"] for a, b in zip(local, remote))  # one shape


@pytest.mark.parametrize("extra", [[], ["-k", "5", "--per-video"], ["--from", "visual", "--rerank", "4"], ["--rerank", "20"], ["--rerank", "0"]])
def test_server_and_local_search_give_the_same_hits(index, server, video, extra):
    query = f"{video}@0.0-2.0"
    local = json.loads(avfeat("search", index, query, "--json", *extra, check=0).stdout)
    remote = json.loads(avfeat("search", "--server", server, query, "--json", *extra, check=0).stdout)
    assert local
    _same_hits(local, remote)
    assert all(h["path"].startswith(server + "/media/") for h in remote)


def test_server_file_query_exclude_video_and_table(index, corpus, server, cache):
    query = str(sorted(corpus.glob("*.mp4"))[0])
    own = Cache(cache).records()[0].video_id
    local = json.loads(avfeat("search", index, query, "--exclude-video", own, "--json", check=0).stdout)
    remote = json.loads(avfeat("search", "--server", server, query, "--exclude-video", own, "--json", check=0).stdout)
    _same_hits(local, remote)
    table = avfeat("search", "--server", server, query, check=0).stdout.splitlines()
    assert table[0].split() == avfeat("search", index, query, check=0).stdout.splitlines()[0].split()


def test_server_batch_json_lines_and_env(index, server, video, monkeypatch):
    queries = [f"{video}@0.0-2.0", f"{video}@0.5-2.5"]
    local = [json.loads(line) for line in avfeat("search", index, *queries, "--json", check=0).stdout.splitlines()]
    monkeypatch.setenv("AVFEAT_SERVER", server)
    remote = [json.loads(line) for line in avfeat("search", *queries, "--json", check=0).stdout.splitlines()]
    assert [(r["query"], r["side"]) for r in remote] == [(r["query"], r["side"]) for r in local]
    for a, b in zip(local, remote):
        _same_hits(a["hits"], b["hits"])


def test_server_locate(index, server, video):
    local = json.loads(avfeat("search", index, f"{video}@1.0-2.6", "--locate", "--json", "-k", 3, check=0).stdout)
    remote = json.loads(avfeat("search", "--server", server, f"{video}@1.0-2.6", "--locate", "--json", "-k", 3, check=0).stdout)
    assert [(c["video_id"], c["time"], c["votes"]) for c in remote] == [(c["video_id"], round(c["time"], 4), c["votes"]) for c in local]
    assert set(remote[0]) == set(local[0])


def test_server_path_imports_no_models(server, video):
    code = ("import sys; from avfeat.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('heavy:', sorted(m for m in ('torch', 'transformers', 'faiss') if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, "search", "--server", server, f"{video}@0.0-2.0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stderr and f"{server}/media/" in done.stdout


def test_server_refusals_are_one_line(index, server, video, tmp_path):
    for extra, words in [(["--thumbs", tmp_path / "t.png"], "--thumbs"), (["--device", "cpu", "--cache", tmp_path], "--cache, --device")]:
        assert words in one_line_error(avfeat("search", "--server", server, f"{video}@0-2", *extra, check=1))
    assert "give no INDEX" in one_line_error(avfeat("search", "--server", server, index, f"{video}@0-2", check=1))
    assert "cannot reach" in one_line_error(avfeat("search", "--server", f"http://127.0.0.1:{free_port()}", f"{video}@0-2", check=1))
    assert "404" in one_line_error(avfeat("search", "--server", server, "nope@0-2", check=1))


def test_server_with_a_token(index, video, monkeypatch):
    query = f"{video}@0.0-2.0"
    with serve_index(index, "--token", "s3cret") as url:
        assert "401" in one_line_error(avfeat("search", "--server", url, query, check=1))
        assert json.loads(avfeat("search", "--server", url, query, "--token", "s3cret", "--json", check=0).stdout)
        monkeypatch.setenv("AVFEAT_TOKEN", "s3cret")
        assert json.loads(avfeat("search", "--server", url, query, "--json", check=0).stdout)
