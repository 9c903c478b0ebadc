"""Reading a request's query for `avfeat serve`: an upload (saved to a private temp folder,
removed after the request), a JSON span of an indexed video, or a vector; and running the
model work on it one request at a time (``Service.lock``)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import List, Optional

import anyio
import anyio.to_thread
from fastapi import Request
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool

from avfeat.core.errors import AvfeatError, InputError, QueryError
from avfeat.index.serve.errors import validation_message
from avfeat.index.serve.service import Service

_SUFFIX = re.compile(r"^\.[a-z0-9]{1,8}$")


class SpanBody(BaseModel):
    """JSON query: an indexed video's span (times: seconds, m:ss or h:mm:ss; default: all
    of it), or a vector in the heads' space."""

    model_config = ConfigDict(extra="forbid")
    video_id: Optional[str] = None
    start: Optional[float | str] = None
    end: Optional[float | str] = None
    vector: Optional[List[float]] = None

    @field_validator("start", "end", "vector", mode="before")
    @classmethod
    def _no_booleans(cls, value, info):
        """JSON true or false is no time and no number (pydantic would read true as 1)."""
        if isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool) for v in value)):
            raise ValueError(f"{info.field_name} takes {'numbers' if info.field_name == 'vector' else 'seconds or m:ss'}, not true or false")
        return value


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request) -> SpanBody:
    try:
        return SpanBody.model_validate(json.loads(await request.body() or b"null"))
    except ValueError as error:  # bad JSON, or pydantic's ValidationError (a ValueError)
        raise QueryError(validation_message(error) if isinstance(error, ValidationError) else f"the body is not JSON: {error}") from None
    except RecursionError:  # json's parser recurses per level: [[[[... past the interpreter's limit
        raise QueryError("the body's JSON is nested too deeply") from None


async def save_upload(request: Request, folder: Path) -> Path:
    """The multipart field ``file``, written to ``folder`` under a fixed name (only its suffix
    kept: the suffix tells an image, a sound or a video apart)."""
    form = await request.form(max_files=1, max_fields=16)
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InputError("the multipart body needs a file in the field 'file'")
        suffix = Path(upload.filename or "").suffix.lower()
        target = folder / ("query" + (suffix if _SUFFIX.match(suffix) else ""))
        with open(target, "wb") as out:
            await run_in_threadpool(shutil.copyfileobj, upload.file, out, 1 << 20)
        if target.stat().st_size == 0:
            raise QueryError("the uploaded file is empty")
        return target
    finally:
        await form.close()


async def read_query(service: Service, request: Request, folder: Path, allow_vector: bool):
    """The request's query: a saved upload (Path), ``VIDEO_ID@START-END`` text, or a vector (list)."""
    kind = content_type(request)
    if kind == "multipart/form-data":
        return await save_upload(request, folder)
    if kind == "application/json":
        body = await read_body(request)
        if (body.vector is None) == (body.video_id is None):
            raise QueryError("give either video_id (with optional start and end) or vector" if allow_vector else "give video_id (with optional start and end)")
        if body.vector is not None:
            if not allow_vector:
                raise QueryError("this endpoint takes a file or a video_id, not a vector")
            return list(body.vector)
        return service.id_query(body.video_id, body.start, body.end)
    raise InputError("send a file (multipart/form-data, field 'file') or JSON ({video_id, start, end}" + (" or {vector}" if allow_vector else "") + ")")


# Per event loop, per service: the queue of model requests (a one-thread capacity limiter).
_MODEL_QUEUES: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.WeakKeyDictionary]" = weakref.WeakKeyDictionary()


def _model_queue(service: Service) -> anyio.CapacityLimiter:
    per_loop = _MODEL_QUEUES.setdefault(asyncio.get_running_loop(), weakref.WeakKeyDictionary())
    return per_loop.setdefault(service, anyio.CapacityLimiter(1))


async def locked(service: Service, work, *args):
    """``work(*args)`` in a worker thread, one at a time (``service.lock``).

    Requests queue on the event loop (a capacity limiter of one thread of their own), not in
    worker threads blocked on the lock: however many wait, the shared thread pool stays free for
    ``/media``, ``/api/videos`` and the rest, and ``/health`` and ``/metrics`` never wait."""
    def run():
        with service.lock:
            return work(*args)

    return await anyio.to_thread.run_sync(run, limiter=_model_queue(service))


async def run_query(service: Service, request: Request, allow_vector: bool, work, run=None):
    """Read the request's query into a private temp folder (removed whatever happens), then
    run ``work(query)`` under the model lock (or await ``run(query)``, which takes the lock
    itself where it needs it). Messages name an upload "the uploaded file",
    not its temp path."""
    with tempfile.TemporaryDirectory(prefix="avfeat-serve-") as folder:
        try:
            query = await read_query(service, request, Path(folder), allow_vector)
            return await (run(query) if run else locked(service, work, query))
        except AvfeatError as error:
            message = re.sub(r"(query )?" + re.escape(os.path.join(folder, "query")) + r"(\.[a-z0-9]+)?", "the uploaded file", str(error))
            if message == str(error):
                raise
            raise type(error)(message) from None
