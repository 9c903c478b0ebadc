"""Throughput and latency of `avfeat serve` (prints, never asserts): p50/p99 and requests/s at
1, 8 and 32 client threads for id, vector and upload queries, with ``--workers 1`` and
``--workers 2``, and ``/health`` while upload queries fill the model queue.

The index: the tiny random backbones over ``--videos`` synthetic clips, grown to ``--windows``
windows per modality through the library's index writer (random unit vectors in a flat FAISS
index, table rows repeated), so FAISS searches what a large index costs. Id queries (rerank 0)
and vector queries take the batched FAISS path; uploads embed with the tiny models under the
model lock. Each client thread keeps one HTTP connection.

    python benchmarks/serve.py             # 100,000 windows, 40 requests per client: minutes
    python benchmarks/serve.py --smoke     # 2,000 windows, a few requests: does it run?
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np
from _bench import machine, parse, parser, print_figures, work_folder

CLIENTS = (1, 8, 32)


def grow(index: Path, windows: int) -> None:
    """Rewrite ``index`` with ``windows`` rows per modality: random unit vectors, repeated rows."""
    import faiss

    from avfeat.index.store import META_FILE, IndexFolder, write_index

    folder = IndexFolder(index)
    meta = json.loads((index / META_FILE).read_text())
    rng = np.random.default_rng(0)
    shards, tables = {}, {}
    for modality, info in meta["modalities"].items():
        table = folder.table(modality)
        tables[modality] = table.take(np.arange(windows) % table.num_rows)
        vectors = rng.standard_normal((windows, meta["dim"])).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        flat = faiss.IndexFlatIP(meta["dim"])
        flat.add(vectors)
        shards[modality] = [flat]
        info.update(count=windows, factory="Flat", params={})
        info.pop("deltas", None)
    write_index(index, meta, shards, tables)


def _request(connection: http.client.HTTPConnection, kind: str, payload) -> None:
    if kind == "health":
        connection.request("GET", "/health")
    elif kind == "upload":
        boundary = "avfeatbench"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.mp4\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
        connection.request("POST", "/api/search?k=10", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    else:
        connection.request("POST", "/api/search?k=10&rerank=0", json.dumps(payload), {"Content-Type": "application/json"})
    answer = connection.getresponse()
    answer.read()
    if answer.status != 200:
        raise SystemExit(f"{kind} query answered {answer.status}")


def load(port: int, kind: str, payloads: list, clients: int, each: int) -> dict:
    """``clients`` threads, ``each`` requests each: latency percentiles (ms) and requests/s."""
    times: list[float] = []

    def client(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        for i in range(each):
            started = time.perf_counter()
            _request(connection, kind, payloads[(number * each + i) % len(payloads)])
            times.append(time.perf_counter() - started)
        connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"p50_ms": round(1000 * statistics.median(times), 1), "p99_ms": round(1000 * float(np.percentile(times, 99)), 1),
            "per_s": round(len(times) / wall, 1)}


def health_while_busy(port: int, upload: bytes, clients: int, asks: int) -> dict:
    """``/health`` latency while ``clients`` threads keep uploads queued on the model lock."""
    busy = threading.Thread(target=load, args=(port, "upload", [upload], clients, 2))
    busy.start()
    time.sleep(0.5)  # the uploads are in the queue
    figures = load(port, "health", [None], 1, asks)
    busy.join()
    return figures


def warm(port: int, workers: int) -> None:
    """Ask /health until each worker has answered (the kernel picks who accepts)."""
    pids = set()
    for _ in range(2000):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("GET", "/health")
        pids.add(json.loads(connection.getresponse().read())["pid"])
        connection.close()
        if len(pids) >= workers:
            return
        time.sleep(0.01)


def main() -> None:
    args = parse(_parser(), {"videos": 4, "windows": 2000, "each": 3})
    from search_latency import build

    from avfeat.data.cache import Cache
    from avfeat.testing.servers import serve_index

    folder = work_folder(args.work, "avfeat-serve-bench-")
    index, _ = build(folder, args.videos)
    grow(index, args.windows)
    videos = [r.video_id for r in Cache(folder / "cache").records()]
    dim = json.loads((index / "meta.json").read_text())["dim"]
    rng = np.random.default_rng(1)
    payloads = {"id": [{"video_id": v, "start": 0.5, "end": 2.5} for v in videos],
                "vector": [{"vector": rng.standard_normal(dim).tolist()} for _ in range(64)],
                "upload": [sorted((folder / "corpus").glob("*.mp4"))[0].read_bytes()]}
    figures = {"machine": machine(), "windows": args.windows, "requests_per_client": args.each}
    for workers in (1, 2):
        with serve_index(index, "--workers", workers) as url:
            port = int(url.rsplit(":", 1)[1])
            warm(port, workers)
            for kind, given in payloads.items():
                for clients in CLIENTS:
                    each = max(1, args.each // 4) if kind == "upload" else args.each
                    for name, value in load(port, kind, given, clients, each).items():
                        figures[f"w{workers}_{kind}_c{clients}_{name}"] = value
            for name, value in health_while_busy(port, payloads["upload"][0], 8, args.each).items():
                figures[f"w{workers}_health_busy_{name}"] = value
    print_figures(figures)


def _parser():
    found = parser(__doc__)
    found.add_argument("--videos", type=int, default=16, help="synthetic clips (their tokens back id queries and uploads)")
    found.add_argument("--windows", type=int, default=100_000, help="windows per modality in the grown index")
    found.add_argument("--each", type=int, default=40, help="requests per client thread (uploads: a quarter)")
    found.add_argument("--work", type=Path, default=None, help="folder for the corpus, cache, heads and index (default: a temporary one)")
    return found


if __name__ == "__main__":
    main()
