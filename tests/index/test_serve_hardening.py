"""`avfeat serve` under hostile or broken requests: nested JSON, bodies cut short, long and
odd video ids, spans sync does not take, cross-site posts; and what it shows of itself: no
server paths in answers, no tokens in its log, a port in use found before anything loads."""

import asyncio
import logging
import logging.config
import shutil
import socket

import pytest

from avfeat.testing.runner import one_line_error
from avfeat.testing.runner import run_avfeat as avfeat

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")


@pytest.fixture(scope="module")
def service(index):
    from avfeat.index.serve.service import Service

    return Service(index, device="cpu")


@pytest.fixture(scope="module")
def client(service):
    from starlette.testclient import TestClient

    from avfeat.index.serve.app import create_app

    return TestClient(create_app(service), raise_server_exceptions=False)


def one_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"], body
    return body["error"]


def test_deeply_nested_json_is_a_400(client):
    response = client.post("/api/search", content=b"[" * 100_000, headers={"content-type": "application/json"})
    assert "nested too deeply" in one_error(response, 400)  # before: RecursionError, a 500


def test_a_body_cut_short_is_a_400_with_no_traceback_logged(client, caplog):
    boundary = "XyZ"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n'.encode() + b"\0" * 5000
    messages = [{"type": "http.request", "body": part, "more_body": True}, {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/search", "raw_path": b"/api/search", "query_string": b"", "root_path": "", "server": ("testserver", 80),
             "client": ("127.0.0.1", 5000), "headers": [(b"host", b"testserver"), (b"content-type", f"multipart/form-data; boundary={boundary}".encode())]}
    with caplog.at_level(logging.ERROR):
        asyncio.run(client.app(scope, receive, send))  # before: ClientDisconnect raised on (a 500 and a traceback)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_503_names_the_cache_without_its_path(index, cache, tmp_path):
    from starlette.testclient import TestClient

    from avfeat.core.errors import CacheError
    from avfeat.index.serve.app import create_app
    from avfeat.index.serve.service import Service

    moved = tmp_path / "private-folder" / "cache"
    shutil.copytree(cache, moved)
    service = Service(index, cache=moved, device="cpu", warm=False)
    shutil.rmtree(moved)  # the cache goes away: what it needs answers 503
    with pytest.raises(CacheError) as problem:
        service.searcher._open_cache(moved)
    assert str(moved) in str(problem.value)
    service.cache_problem = str(problem.value)
    client = TestClient(create_app(service))
    video = next(iter(service.videos))
    error = one_error(client.post("/api/search", json={"video_id": video}), 503)
    assert "private-folder" not in error and str(tmp_path) not in error and "<cache>" in error, error


def test_long_ids_are_cut_and_odd_ones_refused(client):
    error = one_error(client.post("/api/search", json={"video_id": "x" * 10_000_000}), 404)
    assert len(error) < 300 and "10000000 characters" in error  # before: all 10 MB echoed back
    error = one_error(client.get("/api/videos/" + "y" * 5000), 404)
    assert len(error) < 300
    for odd in ("a\u202eb", "a\nb", "a\x00b", "\u2066x"):
        error = one_error(client.post("/api/search", json={"video_id": odd}), 400)
        assert "control or bidi" in error and odd not in error


def test_sync_takes_a_whole_video_only(client, service):
    video = next(iter(service.videos))
    for extra in ({"start": 0.5}, {"end": 1.0}, {"start": 0.2, "end": 1.0}):
        error = one_error(client.post("/api/sync", json={"video_id": video, **extra}), 400)  # before: 200, the span ignored
        assert "whole video" in error


def test_sec_fetch_site_cross_site_posts_are_refused(client, service):
    body = {"vector": [0.1] * service.searcher.meta["dim"]}
    for site in ("cross-site", "same-site", "Cross-Site"):
        error = one_error(client.post("/api/search", json=body, headers={"Sec-Fetch-Site": site}), 403)  # before: 200
        assert "another site" in error
    for site in ("same-origin", "none", None):
        headers = {"Sec-Fetch-Site": site} if site else {}
        assert client.post("/api/search", json=body, headers=headers).status_code == 200
    assert client.get("/api/videos", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200  # reads change nothing


def test_tokens_never_reach_the_log(capsys):
    from avfeat.index.serve.access import redact
    from avfeat.index.serve.run import log_config

    logging.config.dictConfig(log_config())
    try:
        logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/api/videos?limit=2&token=s3cr3t", "1.1", 200)
        logging.getLogger("uvicorn.error").warning("Authorization: Bearer s3cr3t and cookie avfeat_token=s3cr3t")
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    captured = capsys.readouterr()
    logged = captured.out + captured.err
    assert "GET /api/videos?limit=2&token=***" in logged and "s3cr3t" not in logged, logged
    assert redact("Authorization: s3cr3t") == "Authorization: ***"


def test_a_port_in_use_fails_in_one_line_before_loading(index, monkeypatch):
    import avfeat.index.serve.service as service_module

    def no_loading(*args, **kwargs):
        raise AssertionError("the service loaded before the port was checked")

    monkeypatch.setattr(service_module, "Service", no_loading)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = avfeat("serve", index, "--port", port, check=1)
    one_line_error(result, f"port {port} on 127.0.0.1 is in use")


def test_a_video_is_named_by_its_file_name_or_stem(client, service):
    from pathlib import Path

    video = sorted(service.videos)[0]
    name = Path(service.videos[video].path).name
    for given in (name, Path(name).stem):  # ids are stem-<hash>; a person types the stem
        answer = client.get(f"/api/videos/{given}")
        assert answer.status_code == 200 and answer.json()["video_id"] == video, answer.text
    by_id = client.post("/api/search", json={"video_id": video, "start": 0, "end": 1}).json()
    by_stem = client.post("/api/search", json={"video_id": Path(name).stem, "start": 0, "end": 1}).json()
    assert by_stem == by_id
    typo = Path(name).stem.replace("i", "", 1)  # vdeo_00000: closest to its own id
    answer = client.get(f"/api/videos/{typo}")
    assert answer.status_code == 404 and f"did you mean {video}" in answer.json()["error"], answer.text
    # the server's folders stay private: a full path names nothing
    assert client.get(f"/api/videos/{service.videos[video].path}").status_code == 404
