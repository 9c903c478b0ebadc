"""`/health`, `/metrics` and the other routes without model work answer while model requests
queue: they never wait on the model lock nor on a worker thread held by a queued request (a
real uvicorn server in a thread, more queued requests than worker threads)."""

import json
import socket
import threading
import time
import urllib.request

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")

QUEUED = 60  # more than the worker threads (anyio's default limiter: 40)


class CountingLock:
    """A lock that counts the threads that asked for it."""

    def __init__(self):
        self.inner = threading.Lock()
        self.asked = 0
        self._count = threading.Lock()

    def __enter__(self):
        with self._count:
            self.asked += 1
        self.inner.acquire()
        return self

    def __exit__(self, *exc):
        self.inner.release()


class Counting:
    """The ASGI app, counting the model requests that have reached it."""

    def __init__(self, app):
        self.app, self.entered = app, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/api/search":
            self.entered += 1
        await self.app(scope, receive, send)


def settled(lock: CountingLock, seconds: float = 0.5, limit: float = 15) -> None:
    """Wait until no more threads come asking for the lock (each worker thread a queued request
    may take has taken it)."""
    end, last, since = time.time() + limit, -1, time.time()
    while time.time() < end and time.time() - since < seconds:
        if lock.asked != last:
            last, since = lock.asked, time.time()
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post_vector(url: str, dim: int, answers: list) -> None:
    request = urllib.request.Request(f"{url}/api/search?k=1", data=json.dumps({"vector": [0.1] * dim}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            answers.append(response.status)
    except Exception as error:  # noqa: BLE001 (counted: the test asserts every request was answered)
        answers.append(repr(error))


def test_health_metrics_and_listings_answer_while_more_model_requests_wait_than_there_are_worker_threads(index):
    import uvicorn

    from avfeat.index.serve.app import create_app
    from avfeat.index.serve.service import Service

    service = Service(index, device="cpu")
    service.lock = lock = CountingLock()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = Counting(create_app(service))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    answers: list = []
    clients = [threading.Thread(target=post_vector, args=(url, service.searcher.meta["dim"], answers), daemon=True) for _ in range(QUEUED)]
    lock.inner.acquire()  # the model is busy: every query waits
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        for client in clients:
            client.start()
        while app.entered < QUEUED and time.time() < deadline:  # every query is in the server
            time.sleep(0.05)
        assert app.entered == QUEUED and lock.asked >= 1
        settled(lock)
        for path in ("/health", "/metrics", "/api/videos?limit=1"):
            with urllib.request.urlopen(f"{url}{path}", timeout=10) as response:  # before: waited for a worker thread
                assert response.status == 200
        assert lock.inner.locked() and not answers  # answered while the queries still wait
    finally:
        lock.inner.release()
        for client in clients:
            client.join(timeout=120)
        server.should_exit = True
        thread.join(timeout=10)
    assert answers == [200] * QUEUED


@pytest.fixture(scope="module")
def client(index):
    from starlette.testclient import TestClient

    from avfeat.index.serve.app import create_app
    from avfeat.index.serve.service import Service

    return TestClient(create_app(Service(index, device="cpu")))


@pytest.mark.parametrize("body", [{"start": True, "end": 2.0}, {"start": 0.5, "end": True}, {"start": False}, {"vector": True}])
def test_a_boolean_is_no_time_and_no_number(client, body):
    service = client.app.inner.state.service
    video = next(iter(service.videos))
    if "vector" in body:
        body = {"vector": [True] + [0.1] * (service.searcher.meta["dim"] - 1)}
    else:
        body = {"video_id": video, **body}
    response = client.post("/api/search", json=body)
    assert response.status_code == 400, response.text  # before: true was read as 1 (s)
    error = response.json()["error"]
    assert "\n" not in error and ("start" in error or "end" in error or "vector" in error), error
