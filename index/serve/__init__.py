"""`avfeat serve INDEX`: a warm search service with a JSON API and a web page.

Loading the backbones, heads and FAISS indexes takes seconds to minutes; a query takes
milliseconds to a second once they are loaded. The service loads them once and answers:

    POST /api/search        a file (multipart field ``file``), JSON {video_id, start, end} or {vector}
    POST /api/sync          a video (upload) or JSON {video_id}: offset, confidence and the lag curve
    POST /api/locate        a clip (upload) or JSON {video_id, start, end}: where it was cut from
    GET  /api/videos        the indexed videos (ids, spans, metadata), paged
    GET  /api/videos/{id}   one video's metadata
    GET  /api/attention/{id}?time=T   PNG: where the sound of [T, T + window) is in the frame at T
    GET  /media/{id}        the video's file, with HTTP Range (the page plays /media/{id}#t=START,END)
    GET  /health, /metrics  liveness and Prometheus text
    GET  /                  the page (index/web/: every asset served from here, no CDN)

Safety: paths never come from a request (``/media`` looks the file up by video id in the index
table); hits carry no server paths; uploads go to a private temp folder removed after each
request, and a request body over ``--max-upload`` is refused (413) before or while it arrives;
a request's mistake is a 4xx JSON ``{"error": "one line"}``, an unexpected failure a 500 with
one line (the traceback goes to the server log only). Model work runs one request at a time.

Modules: ``service`` (the warm state and the work), ``app`` (the ASGI app: ``routes``,
``queries``, ``errors``, ``guard``), ``access`` (Host, Origin, token and size rules),
``metrics``, ``run`` (``run_server``, the command's call) and ``client`` (``search_remote``,
``sync_remote``, ``locate_remote``: re-exported here). FastAPI, uvicorn and prometheus_client
are an optional extra (the ``serve`` extra of avfeat's wheel): importing this package (the client)
needs none of them.
"""

from avfeat.index.serve.client import RemoteError, locate_remote, search_remote, sync_remote

__all__ = ["RemoteError", "locate_remote", "search_remote", "sync_remote"]
