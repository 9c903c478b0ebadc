"""`avfeat serve`'s JSON API, through Starlette's TestClient (no sockets) and, for the Python
client, a real uvicorn server in a thread.

One small setup (``serve_setup``), also used by test_browser.py: 16 synthetic videos of 4
classes, tiny random backbones, heads trained for 100 steps and an index; 4 held-out videos of
the same classes (another synth seed). With this recipe a held-out video's pictures find a
video of their class at rank 1 (8 of 8 held-out videos when it was chosen; the test asserts
one, deterministic with its seeds).
"""

import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from avfeat.testing.runner import TINY_MODELS as TINY
from avfeat.testing.recipes import corpus_classes
from avfeat.testing.runner import run_avfeat as avfeat

fastapi = pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")

_BUILT: dict = {}


@dataclass
class ServeSetup:
    corpus: Path
    held: Path
    cache: Path
    index: Path
    classes: dict  # file name → class, indexed videos
    held_classes: dict  # file name → class, held-out videos

    def class_of(self, video_id: str) -> int:
        """The class of an indexed video, by its id (ids start with the file's stem)."""
        stem = video_id.rsplit("-", 1)[0]
        return self.classes[f"{stem}.mp4"]


def serve_setup(tmp_path_factory) -> ServeSetup:
    """Corpus, cache, heads and index for the serve tests, built once per session."""
    if "setup" not in _BUILT:
        from avfeat.data.synth import make_corpus

        root = tmp_path_factory.mktemp("serve")
        make_corpus(root / "corpus", videos=16, seconds=3.0, classes=4, seed=0, size=64)
        make_corpus(root / "held", videos=4, seconds=3.0, classes=4, seed=1, size=64)
        avfeat("extract", root / "corpus", "--out", root / "cache", *TINY, "--fps", 5, "--quiet", "--workers", 1, check=0)
        avfeat("train-head", root / "cache", "--out", root / "heads", "--window", 1.0, "--hop", 0.2, "--dim", 32, "--steps", 100,
               "--batch-size", 6, "--seed", 0, "--val-fraction", 0.25, "--workers", 0, "--quiet", check=0)
        avfeat("index", root / "cache", "--heads", root / "heads", "--out", root / "index", "--quiet", check=0)
        _BUILT["setup"] = ServeSetup(root / "corpus", root / "held", root / "cache", root / "index",
                                     corpus_classes(root / "corpus"), corpus_classes(root / "held"))
    return _BUILT["setup"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return serve_setup(tmp_path_factory)


@pytest.fixture(scope="module")
def service(setup):
    from avfeat.index.serve.service import Service

    return Service(setup.index, device="cpu")


@pytest.fixture(scope="module")
def client(service):
    from starlette.testclient import TestClient

    from avfeat.index.serve.app import create_app

    return TestClient(create_app(service, max_upload="1MB"))


def upload(path: Path) -> dict:
    return {"file": (path.name, path.read_bytes(), "application/octet-stream")}


def first_video(service) -> str:
    return next(iter(service.videos))


def assert_one_error(response, status: int) -> str:
    """A refused request: the status, and a JSON body holding one line under "error" only."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and body["error"] and "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


def test_health_and_videos(client, service):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["videos"] == 16 and health["cache"] is True
    listing = client.get("/api/videos", params={"limit": 5}).json()
    assert listing["total"] == 16 and len(listing["videos"]) == 5
    video = client.get(f"/api/videos/{first_video(service)}").json()
    assert video["video_id"] == first_video(service) and video["width"] == 64 and video["windows"] > 0
    assert "path" not in video and video["media"] == f"/media/{first_video(service)}"


def test_search_by_upload_finds_the_class(client, setup):
    name = sorted(setup.held_classes)[0]
    answer = client.post("/api/search", files=upload(setup.held / name), params={"side": "visual", "k": 5}).json()
    assert answer["side"] == "visual" and answer["searched"] == "audio"
    hits = answer["hits"]
    assert [hit["rank"] for hit in hits] == [1, 2, 3, 4, 5]
    assert setup.class_of(hits[0]["video_id"]) == setup.held_classes[name]
    assert len({hit["video_id"] for hit in hits}) == 5  # one hit per video by default
    for hit in hits:
        assert "path" not in hit and set(hit) == {"rank", "score", "video_id", "start", "end", "metadata", "media"}
        assert hit["media"] == f"/media/{hit['video_id']}#t={hit['start']:.3f},{hit['end']:.3f}"


def test_search_by_span_excludes_its_own_video(client, service):
    video = first_video(service)
    plain = client.post("/api/search", json={"video_id": video, "start": 0.5, "end": "0:02"}, params={"k": 15}).json()["hits"]
    assert video in {hit["video_id"] for hit in plain}
    hits = client.post("/api/search", json={"video_id": video, "start": 0.5, "end": 2.0}, params={"k": 15, "exclude_video": video}).json()["hits"]
    assert len(hits) == 15 and video not in {hit["video_id"] for hit in hits}
    assert len({hit["video_id"] for hit in hits}) == 15
    # Without one hit per video, a video's neighbouring windows come back too.
    windows = client.post("/api/search", json={"video_id": video}, params={"k": 30, "one_per_video": "false"}).json()["hits"]
    assert len(windows) == 30 and len({hit["video_id"] for hit in windows}) < 30


def test_search_by_vector_matches_search_by_span(client, service):
    video = first_video(service)
    vector = service.searcher.embed(f"{video}@0.5-2", "audio")[0]
    by_vector = client.post("/api/search", json={"vector": vector.tolist()}, params={"k": 4, "side": "audio"}).json()["hits"]
    # rerank 0: a vector has no tokens to rerank with (a span reranks by default)
    by_span = client.post("/api/search", json={"video_id": video, "start": 0.5, "end": 2}, params={"k": 4, "rerank": 0}).json()["hits"]
    assert [(h["video_id"], h["start"]) for h in by_vector] == [(h["video_id"], h["start"]) for h in by_span]
    np.testing.assert_allclose([h["score"] for h in by_vector], [h["score"] for h in by_span], atol=1e-5)


def test_search_with_rerank_and_where(client, service):
    video = first_video(service)
    reranked = client.post("/api/search", json={"video_id": video, "start": 0, "end": 1}, params={"k": 3, "rerank": 5}).json()["hits"]
    assert len(reranked) == 3 and reranked[0]["score"] >= reranked[-1]["score"]
    only = client.post("/api/search", json={"video_id": video}, params={"k": 3, "one_per_video": "false", "where": f"video_id={video}"}).json()["hits"]
    assert len(only) == 3 and {hit["video_id"] for hit in only} == {video}


def test_sync_and_locate(client, service, setup, tmp_path):
    from avfeat.data.synth import cut_clip

    video = first_video(service)
    source = Path(service.videos[video].path)
    answer = client.post("/api/sync", files=upload(source)).json()
    assert -2.0 <= answer["offset"] <= 2.0 and 0.0 <= answer["confidence"] <= 1.0
    assert len(answer["lags"]) == len(answer["curve"]) == 201  # ±2 s in 20 ms steps
    cached = client.post("/api/sync", json={"video_id": video}, params={"max_offset": 1.0}).json()
    assert len(cached["lags"]) == 101
    cut_clip(source, tmp_path / "clip.mp4", 0.6, 2.0)
    located = client.post("/api/locate", files=upload(tmp_path / "clip.mp4"), params={"k": 2}).json()
    best = located["candidates"][0]
    assert best["video_id"] == video and abs(best["time"] - 0.6) <= 0.2
    # Each candidate's score and the threshold the service held the best one to.
    assert 0.0 <= located["threshold"] <= best["score"] <= 1.0 + 1e-6


def test_attention_map_is_a_png(client, service):
    response = client.get(f"/api/attention/{first_video(service)}", params={"time": 1.0})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")
    assert_one_error(client.get(f"/api/attention/{first_video(service)}", params={"time": 99}), 400)


def test_media_serves_ranges_of_the_recorded_file_only(client, service):
    video = first_video(service)
    data = Path(service.videos[video].path).read_bytes()
    whole = client.get(f"/media/{video}")
    assert whole.status_code == 200 and whole.content == data and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == "video/mp4"
    part = client.get(f"/media/{video}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    tail = client.get(f"/media/{video}", headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == data[-50:]
    assert "did you mean" in assert_one_error(client.get(f"/media/{video[:-1]}"), 404)
    for hostile in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"):
        assert client.get(f"/media/{hostile}").status_code == 404


def test_bad_requests_get_one_line(client, service):
    video = first_video(service)
    vector = [0.1] * service.searcher.meta["dim"]
    search = "/api/search"
    assert "k" in assert_one_error(client.post(search, json={"vector": vector}, params={"k": 0}), 422)
    assert "side" in assert_one_error(client.post(search, json={"vector": vector}, params={"side": "smell"}), 422)
    assert "rerank" in assert_one_error(client.post(search, json={"vector": vector}, params={"rerank": 3}), 400)
    assert "no column" in assert_one_error(client.post(search, json={"vector": vector}, params={"where": "colour=red"}), 400)
    assert_one_error(client.post(search, json={"vector": [0.1, 0.2]}), 400)
    assert_one_error(client.post(search, json={"vector": vector, "video_id": video}), 400)
    assert_one_error(client.post(search, json={"video_id": video, "start": 2, "end": 1}), 400)
    assert "ends after" in assert_one_error(client.post(search, json={"video_id": video, "start": 1, "end": 30}), 400)
    assert_one_error(client.post(search, json={"video_id": video, "colour": 1}), 400)
    assert_one_error(client.post(search, content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert_one_error(client.post(search, content=b"hello", headers={"content-type": "text/plain"}), 400)
    assert "not in the index" in assert_one_error(client.post(search, json={"video_id": "nope"}), 404)
    assert_one_error(client.post(search, json={"vector": vector}, params={"exclude_video": "nope"}), 404)
    message = assert_one_error(client.post(search, files={"file": ("x.mp4", b"not a video")}), 400)
    assert "the uploaded file" in message and tempfile.gettempdir() not in message
    assert_one_error(client.post(search, files={"file": ("empty.wav", b"")}), 400)
    assert_one_error(client.post(search, files={"other": ("x.mp4", b"data")}), 400)
    assert_one_error(client.post("/api/sync", json={"vector": vector}), 400)
    assert_one_error(client.post("/api/locate", json={"video_id": video}, params={"k": 1000}), 422)
    assert_one_error(client.get("/no/such/page"), 404)


def test_an_unexpected_failure_is_a_one_line_500(service, monkeypatch):
    from starlette.testclient import TestClient

    from avfeat.index.serve.app import create_app

    def broken(*args, **kwargs):
        raise RuntimeError("internal detail\nsecond line")

    monkeypatch.setattr(service, "search", broken)
    monkeypatch.setattr(service, "plan_search", broken)  # the route's first step (then FAISS, batched)
    client = TestClient(create_app(service), raise_server_exceptions=False)
    message = assert_one_error(client.post("/api/search", json={"vector": [0.1] * service.searcher.meta["dim"]}), 500)
    assert "RuntimeError" in message and "internal detail" not in message


def test_oversize_uploads_are_refused_and_temp_files_removed(client, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the uploads go, to look at
    big = b"\0" * ((1 << 20) + 1)
    assert "limit" in assert_one_error(client.post("/api/search", files={"file": ("big.mp4", big)}), 413)

    def chunks():  # no Content-Length: the body is counted as it arrives
        for _ in range(40):
            yield b"\0" * 65536

    response = client.post("/api/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert_one_error(response, 413)
    client.post("/api/search", files={"file": ("bad.mp4", b"not a video")})
    assert list(tmp_path.iterdir()) == []


def test_metrics_count_requests_latency_and_errors(client, service):
    client.get("/health")
    client.post("/api/search", json={"vector": [0.1] * service.searcher.meta["dim"]}, params={"k": 0})
    text = client.get("/metrics").text
    assert 'avfeat_requests_total{endpoint="/health",method="GET",status="200"}' in text
    assert 'avfeat_requests_total{endpoint="/api/search",method="POST",status="422"}' in text
    assert 'avfeat_request_duration_seconds_bucket{endpoint="/health",le="+Inf"}' in text
    assert 'avfeat_request_duration_seconds_count{endpoint="/api/search"}' in text
    assert 'avfeat_errors_total{endpoint="/api/search",type="RequestValidationError"}' in text
    assert 'avfeat_index_windows{modality="audio"}' in text
    assert "# TYPE avfeat_request_duration_seconds histogram" in text


def test_metrics_are_prometheus_text_and_each_app_counts_its_own(service):
    from prometheus_client.parser import text_string_to_metric_families
    from starlette.testclient import TestClient

    from avfeat.index.serve.app import create_app

    one, two = TestClient(create_app(service)), TestClient(create_app(service))
    for _ in range(3):
        one.get("/health")
    two.get("/api/videos")
    answer = one.get("/metrics")
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(answer.text) for s in f.samples}
    assert samples[("avfeat_requests_total", (("endpoint", "/health"), ("method", "GET"), ("status", "200")))] == 3
    assert samples[("avfeat_request_duration_seconds_count", (("endpoint", "/health"),))] == 3
    assert samples[("avfeat_index_videos", ())] == len(service.videos)
    assert not any(labels and dict(labels).get("endpoint") == "/api/videos" for _, labels in samples)  # the other app's request
    assert 'avfeat_requests_total{endpoint="/api/videos",method="GET",status="200"} 1.0' in two.get("/metrics").text

def test_no_cdn_docs_but_the_schema(client):
    assert client.get("/docs").status_code == 404
    schema = client.get("/openapi.json").json()
    assert {"/api/search", "/api/sync", "/api/locate", "/media/{video_id}", "/health", "/metrics"} <= set(schema["paths"])
    page = client.get("/").text
    assert "/static/app.js" in page and "http" not in page.replace("http-equiv", "")
    assert client.get("/static/app.js").status_code == 200


def test_token(service):
    from starlette.testclient import TestClient

    from avfeat.index.serve.app import create_app

    guarded = TestClient(create_app(service, token="s3cret"))
    assert guarded.get("/health").status_code == 200
    assert_one_error(guarded.get("/api/videos"), 401)
    assert guarded.get("/api/videos", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert_one_error(guarded.get("/api/videos", headers={"Authorization": "Bearer wrong"}), 401)
    entered = guarded.get("/?token=s3cret", follow_redirects=False)
    assert entered.status_code == 303 and "avfeat_token" in entered.headers["set-cookie"]
    guarded.cookies.set("avfeat_token", "s3cret")
    assert guarded.get("/api/videos").status_code == 200


def test_cli_refuses_other_hosts_without_a_token(setup):
    result = avfeat("serve", setup.index, "--host", "0.0.0.0", check=1)
    assert result.stderr.strip().count("\n") == 0 and "--token" in result.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_python_client_against_a_running_server(service, setup):
    import uvicorn

    from avfeat.index.serve import RemoteError, locate_remote, search_remote, sync_remote
    from avfeat.index.serve.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        name = sorted(setup.held_classes)[0]
        hits = search_remote(url, setup.held / name, k=3, side="visual")
        assert len(hits) == 3 and setup.class_of(hits[0]["video_id"]) == setup.held_classes[name]
        video = first_video(service)
        assert len(search_remote(url, f"{video}@0.5-2", k=2, exclude_video=video)) == 2
        assert search_remote(url, [0.1] * service.searcher.meta["dim"], k=1, where={"video_id": video})[0]["video_id"] == video
        assert "offset" in sync_remote(url, video)
        assert locate_remote(url, Path(service.videos[video].path), k=1)[0]["video_id"] == video
        with pytest.raises(RemoteError, match="404.*not in the index"):
            search_remote(url, "nope@0-1")
        with pytest.raises(RemoteError, match="cannot reach"):
            search_remote(f"http://127.0.0.1:{free_port()}", [0.0], timeout=5)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_module_loads_without_fastapi_for_the_cli():
    # The client is avfeat.index.serve's public API; FastAPI is only imported when serving.
    import subprocess
    import sys

    code = "import sys; import avfeat.index.serve; assert 'fastapi' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_the_command_and_the_service_agree_on_the_upload_limit():
    # avfeat.cli.serve spells the default out so that `avfeat --help` does not import the service.
    from avfeat.cli.serve import DEFAULT_MAX_UPLOAD as shown
    from avfeat.index.serve.access import DEFAULT_MAX_UPLOAD

    assert shown == DEFAULT_MAX_UPLOAD


def test_a_loopback_server_answers_only_to_loopback_names_and_its_own_pages(service):
    """DNS rebinding: a page at evil.example.com whose name now points at 127.0.0.1 sends
    `Host: evil.example.com`; a cross-site form or fetch sends its own Origin."""
    from starlette.testclient import TestClient

    from avfeat.index.serve.access import served_hosts
    from avfeat.index.serve.app import create_app

    hosts = served_hosts("127.0.0.1")
    local = TestClient(create_app(service, hosts=hosts), base_url="http://127.0.0.1:8000")
    assert local.get("/api/videos").status_code == 200
    for name in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
        assert local.get("/api/videos", headers={"Host": name}).status_code == 200, name
    for name in ("evil.example.com", "evil.example.com:8000", "127.0.0.1.evil.example.com:8000", ""):
        assert_one_error(local.get("/api/videos", headers={"Host": name}), 421)
        assert_one_error(local.get("/health", headers={"Host": name}), 421)
    video = next(iter(service.videos))
    body = {"video_id": video, "start": 0.0, "end": 1.0}
    assert local.post("/api/search", json=body, headers={"Origin": "http://127.0.0.1:8000"}).status_code == 200
    for origin in ("http://evil.example.com", "null", "http://127.0.0.1:9999"):
        assert_one_error(local.post("/api/search", json=body, headers={"Origin": origin}), 403)
    # --allow-host adds a name; a server beyond loopback (it needs --token) answers to any name
    extra = TestClient(create_app(service, hosts=served_hosts("127.0.0.1", ["av.lab"])), base_url="http://av.lab:8000")
    assert extra.get("/api/videos").status_code == 200
    assert served_hosts("0.0.0.0") is None and served_hosts("10.0.0.5", ["av.lab"]) == ["10.0.0.5", "av.lab"]


def test_an_image_bomb_upload_is_a_400(client, tmp_path):
    import struct
    import zlib

    from PIL import Image

    Image.new("RGB", (1, 1)).save(tmp_path / "bomb.png")
    data = bytearray((tmp_path / "bomb.png").read_bytes())
    data[16:24] = struct.pack(">II", 20000, 20000)  # IHDR's width and height: 400M pixels
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    (tmp_path / "bomb.png").write_bytes(bytes(data))
    assert "image too large" in assert_one_error(client.post("/api/search", files=upload(tmp_path / "bomb.png")), 400)
