"""`avfeat serve --workers N`: N processes answer on the one port, every guard the same in each,
and SIGTERM to the parent stops them all."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from avfeat.data.cache import Cache
from avfeat.testing.runner import one_line_error
from avfeat.testing.runner import run_avfeat as avfeat
from avfeat.testing.servers import free_port

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")


def _get(url: str, token: str | None = None) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def workers(index):
    """A real `avfeat serve --workers 2 --token t` and its URL."""
    port = free_port()
    command = [sys.executable, "-m", "avfeat", "serve", str(index), "--port", str(port), "--device", "cpu", "--quiet", "--workers", "2", "--token", "t"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for line in process.stderr:  # said once every worker has loaded
            if line.startswith("avfeat serve:"):
                assert "2 workers" in line
                break
        else:
            raise RuntimeError(f"avfeat serve exited {process.wait()} before it listened")
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited and not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_two_workers_answer_guard_alike_and_stop_on_sigterm(workers, cache):
    process, url = workers
    pids: set[int] = set()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(50):  # which worker accepts is the kernel's choice: ask until both have
            pids |= {health["pid"] for health in pool.map(lambda _: _get(url + "/health"), range(16))}
            if len(pids) == 2:
                break
    assert len(pids) == 2 and process.pid not in pids
    video = Cache(cache).records()[0].video_id
    body = json.dumps({"video_id": video, "start": 0.0, "end": 2.0}).encode()
    answers = set()
    for _ in range(8):  # every worker asks for the token and answers the same hits
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url + "/api/videos"), timeout=30)
        assert refused.value.code == 401
        request = urllib.request.Request(url + "/api/search?rerank=0", data=body, headers={"Authorization": "Bearer t", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            answers.add(json.dumps(json.loads(answer.read())["hits"]))
    assert len(answers) == 1
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert not any(_alive(pid) for pid in pids)  # no worker outlives the parent


def test_workers_stop_when_the_parent_is_killed(index):
    """SIGKILL cannot be forwarded: each worker asks the kernel to stop it when the parent dies."""
    port = free_port()
    command = [sys.executable, "-m", "avfeat", "serve", str(index), "--port", str(port), "--device", "cpu", "--quiet", "--workers", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert any(line.startswith("avfeat serve:") for line in process.stderr)
        pid = _get(f"http://127.0.0.1:{port}/health")["pid"]
    finally:
        process.kill()
        process.wait()
    for _ in range(600):  # the worker finishes its shutdown
        if not _alive(pid):
            break
        time.sleep(0.1)
    assert not _alive(pid)


def test_a_bad_index_is_one_line_with_workers(tmp_path):
    result = avfeat("serve", tmp_path / "nothing", "--port", str(free_port()), "--workers", "2", check=1)
    one_line_error(result)
