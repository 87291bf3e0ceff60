"""The HTTP API (FastAPI). Every route needs the bearer token when the server has one.

- ``POST /uploads``: one ``.npy`` array (no pickle) -> ``{"id"}``; kept until a job takes it, or
  ``result_ttl`` seconds.
- ``POST /jobs``: ``{"task", "kwargs", "arrays": {"image": upload id, ...}}`` -> a Server-Sent Events
  stream: ``accepted`` (the job id), ``queued`` (place in line), ``started``, ``progress`` (done,
  total, message, preview), then ``done`` (the result's JSON tree and its arrays), ``failed`` or
  ``cancelled``. Closing the stream cancels the job.
- ``GET /jobs/{id}``: the job's state; ``POST /jobs/{id}/cancel``; ``GET /jobs/{id}/arrays/{name}``:
  one result array as ``.npy``; ``DELETE /jobs/{id}``: forget the result.
- ``GET /models``: the cards; ``GET /health``: version, device, GPU, queue.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import secrets
import time
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .. import __version__
from ..wire import ArrayRefused, from_npy, to_npy
from .config import ServerConfig
from .jobs import ENDED, JobQueue, QueueFull
from .tasks import RequestRefused, known_models, prepare_call

MAX_JSON_BYTES = 1 << 20
MAX_HELD = 4  # uploads held before their jobs, in multiples of max_request_bytes


def device_info(device: str) -> dict[str, Any]:
    """The torch device a server runs on, with the GPU's name and memory when it is CUDA."""
    import torch

    from ..device import select_device

    dev = select_device(device)
    info: dict[str, Any] = {"device": str(dev), "torch": torch.__version__, "gpu": None}
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info["gpu"] = {"name": props.name, "memory_total": int(props.total_memory)}
    return info


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (before reading on
    when the declared length already does)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request of {int(declared)} bytes is larger than this server's limit of "
                                 f"{limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request is larger than this server's limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(config: ServerConfig, preload: tuple[str, ...] = ()) -> FastAPI:
    """The server's app: models in ``preload`` are loaded (and kept) before it answers."""
    info = device_info(config.device)
    if preload:
        from ..models import get_model

        for name in preload:
            get_model(name, device=info["device"])
    queue = JobQueue(config, {"version": __version__, **info})
    uploads: dict[str, tuple[float, Any]] = {}

    def authorise(request: Request) -> None:
        if config.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), config.token.encode()):
            raise HTTPException(401, "a valid bearer token is required (Authorization: Bearer TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        queue.stop()

    app = FastAPI(title="napari-diffmed", version=__version__, dependencies=[Depends(authorise)],
                  docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.queue = queue

    def job_or_404(job_id: str):
        job = queue.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} (finished results are kept {config.result_ttl:g} s)")
        return job

    @app.get("/health")
    def health() -> dict[str, Any]:
        gpu = info["gpu"]
        if gpu is not None:
            import torch

            gpu = {**gpu, "memory_allocated": int(torch.cuda.memory_allocated())}
        return {"version": __version__, **info, "gpu": gpu, "queue": queue.stats()}

    @app.get("/models")
    def models() -> list[dict[str, Any]]:
        return [{**json.loads(e.card.to_json()), "source": e.source} for e in known_models().values()]

    @app.post("/uploads")
    async def upload(request: Request) -> dict[str, Any]:
        data = await read_body(request, config.max_request_bytes)
        try:
            array = from_npy(data, config.max_dims, config.max_voxels)
        except ArrayRefused as err:
            raise HTTPException(413 if err.too_large else 422, str(err)) from None
        now = time.monotonic()
        for key in [k for k, (t, _) in uploads.items() if now - t > config.result_ttl]:
            del uploads[key]
        held = sum(a.nbytes for _, a in uploads.values())
        if held + array.nbytes > MAX_HELD * config.max_request_bytes:
            raise HTTPException(429, f"the server holds {held} bytes of uploads not yet used by a job; "
                                     "submit jobs for them or try again later")
        key = secrets.token_urlsafe(12)
        uploads[key] = (now, array)
        return {"id": key, "shape": list(array.shape), "dtype": str(array.dtype)}

    @app.post("/jobs")
    async def submit(request: Request) -> StreamingResponse:
        try:
            body = json.loads(await read_body(request, MAX_JSON_BYTES))
            task, kwargs, refs = body["task"], body.get("kwargs", {}), body.get("arrays", {})
            if not isinstance(task, str) or not isinstance(kwargs, dict) or not isinstance(refs, dict):
                raise TypeError("task must be a name, kwargs and arrays objects")
        except (ValueError, KeyError, TypeError) as err:
            raise HTTPException(422, f"a job is JSON {{'task', 'kwargs', 'arrays'}}: {err}") from None
        missing = [ref for ref in refs.values() if not isinstance(ref, str) or ref not in uploads]
        if missing:
            raise HTTPException(422, f"unknown upload ids {missing}; upload each array first (POST /uploads)")
        arrays = {name: uploads[ref][1] for name, ref in refs.items()}
        try:
            function, call = prepare_call(task, kwargs, arrays, info["device"], config.preview_interval,
                                          settings=body.get("settings"))
            job = queue.submit(task, function, call)
        except RequestRefused as err:
            raise HTTPException(422, str(err)) from None
        except QueueFull as err:
            raise HTTPException(429, str(err)) from None
        for ref in refs.values():
            uploads.pop(ref, None)
        return StreamingResponse(_stream(job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Job-Id": job.id})

    async def _stream(job):
        seen = 0
        try:
            yield _sse("accepted", {"job": job.id})
            while True:
                await job.wait(seen, config.heartbeat)
                events = job.events[seen:]
                if not events:
                    yield ": still here\n\n"  # a heartbeat: a gone client shows up as a failed send
                    continue
                for kind, data in events:
                    yield _sse(kind, data)
                    data.pop("preview", None)  # sent: memory is not held for it
                seen += len(events)
                if job.state in ENDED and seen == len(job.events):
                    return
        finally:
            if job.state not in ENDED:  # the client went away: its job stops
                queue.cancel(job, "the client disconnected")

    @app.get("/jobs/{job_id}")
    def status(job_id: str) -> dict[str, Any]:
        return job_or_404(job_id).status()

    @app.post("/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict[str, Any]:
        job = job_or_404(job_id)
        queue.cancel(job, "cancelled by the client")
        return job.status()

    @app.get("/jobs/{job_id}/arrays/{name}")
    def array(job_id: str, name: str) -> Response:
        job = job_or_404(job_id)
        if name not in job.arrays:
            raise HTTPException(404, f"job {job_id!r} has no array {name!r}")
        return Response(to_npy(job.arrays[name]), media_type="application/octet-stream")

    @app.delete("/jobs/{job_id}")
    def forget(job_id: str) -> JSONResponse:
        job = job_or_404(job_id)
        if job.state not in ENDED:
            raise HTTPException(409, f"job {job_id!r} is {job.state}; cancel it first")
        queue.forget(job)
        return JSONResponse({"deleted": job_id})

    return app


def _sse(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


def serve(app: FastAPI, config: ServerConfig, log_level: str = "info", ssl_certfile: str | None = None,
          ssl_keyfile: str | None = None) -> None:
    """Run ``app`` on uvicorn at the config's host and port until stopped (https with both files)."""
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile, timeout_graceful_shutdown=5)
