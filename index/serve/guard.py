"""The outermost ASGI layer of `avfeat serve`: Host, Origin and token checks, the upload limit
(by Content-Length, and by counting the body as it arrives when there is none) and the metrics
of every request, refused or answered."""

from __future__ import annotations

import time
from typing import Iterable, Optional

from fastapi import FastAPI

from avfeat.index.serve.access import UploadTooLarge, refusal
from avfeat.index.serve.errors import endpoint_of, error_response
from avfeat.index.serve.metrics import Metrics


class Guard:
    """Wraps ``app``: a request that ``access.refusal`` refuses gets its one-line error; one that
    is let in reads its body through a counter that raises ``UploadTooLarge`` past ``limit``."""

    def __init__(self, app: FastAPI, metrics: Metrics, limit: int, token: Optional[str], hosts: Optional[Iterable[str]]):
        self.inner = app
        self.metrics = metrics
        self.limit = limit
        self.token = token
        self.allowed = None if hosts is None else {name.lower().strip("[]") for name in hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        began = time.perf_counter()
        status = [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = scope.get("query_string", b"").decode("latin-1")
        try:
            refused = refusal(headers, scope.get("path", ""), query, self.allowed, self.token, self.limit, scope.get("method", "GET"))
            if refused is not None:
                response = error_response(self.inner, self.metrics, scope, refused.status, refused.message, refused.kind)
                await response(scope, receive, sending)
            else:
                await self.inner(scope, self._counting(receive), sending)
        finally:
            self.metrics.observe(endpoint_of(self.inner, scope), scope.get("method", ""), status[0], time.perf_counter() - began)

    def _counting(self, receive):
        """``receive`` that counts the body's bytes and raises ``UploadTooLarge`` past the limit."""
        received = [0]

        async def counting():
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > self.limit:
                    raise UploadTooLarge(f"the request body is larger than the server's limit of {self.limit} bytes (--max-upload)")
            return message

        return counting
