"""The job queue: first in, first out, ``concurrency`` jobs at a time, each a task's ``iter_`` generator
driven in a worker thread; events for the progress stream, cancellation at the next step, results kept
for a time to live."""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import secrets
import threading
import time
from typing import Any, Callable

from ..wire import encode_result, shrink_preview, to_npy
from .config import ServerConfig

log = logging.getLogger("napari_diffmed.server")
ENDED = ("done", "failed", "cancelled")


class QueueFull(RuntimeError):
    """More jobs are waiting than the server takes: HTTP 429."""


class Job:
    """One request's run. Its events (kind, data) are appended by the worker thread and read by streams."""

    def __init__(self, task: str, function: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        self.id = secrets.token_urlsafe(12)
        self.task, self.function, self.kwargs = task, function, kwargs
        self.state, self.done, self.total = "queued", 0, 0
        self.done_at_cancel: int | None = None
        self.cancel_reason = ""
        self.ended_at: float | None = None
        self.tree: Any = None
        self.arrays: dict[str, Any] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.cancel_requested = threading.Event()
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        with self._lock:
            self.events.append((kind, data))
            waiters = list(self._waiters)
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    async def wait(self, seen: int, timeout: float) -> None:
        """Return when there are more than ``seen`` events, or after ``timeout`` seconds."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            if len(self.events) > seen:
                return
            self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter[1].wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(waiter)

    def status(self) -> dict[str, Any]:
        return {"id": self.id, "task": self.task, "state": self.state, "done": self.done, "total": self.total,
                "done_at_cancel": self.done_at_cancel, "cancel_reason": self.cancel_reason}


class JobQueue:
    """Worker threads taking jobs in order; the janitor deletes ended jobs after ``result_ttl`` seconds."""

    def __init__(self, config: ServerConfig, server_info: dict[str, Any]) -> None:
        self.config, self.server_info = config, server_info
        self.jobs: dict[str, Job] = {}
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: set[Job] = set()
        self.started = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"diffmed-job-{i}", daemon=True)
                         for i in range(config.concurrency)]
        self._threads.append(threading.Thread(target=self._janitor, name="diffmed-janitor", daemon=True))
        for thread in self._threads:
            thread.start()

    def submit(self, task: str, function: Callable[..., Any], kwargs: dict[str, Any]) -> Job:
        with self._cond:
            if len(self.waiting) >= self.config.max_queue:
                raise QueueFull(f"the queue is full ({len(self.waiting)} jobs waiting, at most "
                                f"{self.config.max_queue}); try again later")
            job = Job(task, function, kwargs)
            self.jobs[job.id] = job
            self.waiting.append(job)
            if len(self.waiting) > self.config.concurrency - len(self.running):  # it has to wait
                job.emit("queued", {"job": job.id, "position": len(self.waiting)})
            self._cond.notify()
        return job

    def cancel(self, job: Job, reason: str) -> None:
        """Stop ``job``: a waiting job never starts, a running one stops before its next step."""
        with self._cond:
            if job.state in ENDED or job.cancel_requested.is_set():
                return
            job.cancel_reason, job.done_at_cancel = reason, job.done
            job.cancel_requested.set()
            if job in self.waiting:
                self.waiting.remove(job)
                self._end(job, "cancelled", {"reason": reason})
                self._announce()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"running": len(self.running), "waiting": len(self.waiting), "max_waiting": self.config.max_queue,
                    "concurrency": self.config.concurrency, "jobs_started": self.started}

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            jobs = list(self.waiting) + list(self.running)
            self._cond.notify_all()
        for job in jobs:
            self.cancel(job, "the server is shutting down")

    def _announce(self) -> None:
        """Tell every waiting job its place in the line (1: it starts next)."""
        for k, job in enumerate(self.waiting):
            job.emit("queued", {"job": job.id, "position": k + 1})

    def _end(self, job: Job, state: str, data: dict[str, Any]) -> None:
        job.state, job.ended_at = state, time.monotonic()
        job.kwargs = {}  # the input arrays are no longer needed
        job.emit(state, data)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self.waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self.waiting.popleft()
                self.running.add(job)
                self.started += 1
                job.state = "running"
                self._announce()
            try:
                self._run(job)
            finally:
                with self._cond:
                    self.running.discard(job)
                    self._announce()

    def _run(self, job: Job) -> None:
        import torch

        job.emit("started", {"job": job.id})
        last_preview = float("-inf")
        try:
            with torch.inference_mode():
                gen = job.function(**job.kwargs)
                try:
                    while True:
                        if job.cancel_requested.is_set():  # closing the task's generator cancels it
                            gen.close()
                            self._end(job, "cancelled", {"reason": job.cancel_reason, "done": job.done})
                            return
                        try:
                            event = next(gen)
                        except StopIteration as stop:
                            result = stop.value
                            break
                        job.done, job.total = event.done, event.total
                        data: dict[str, Any] = {"done": event.done, "total": event.total, "message": event.message}
                        now = time.monotonic()
                        if event.preview is not None and (now - last_preview >= self.config.preview_interval
                                                          or event.done >= event.total):
                            last_preview = now
                            data["preview"] = self._preview(event.preview)
                        job.emit("progress", data)
                finally:
                    gen.close()
            job.tree, job.arrays = encode_result(result)
        except Exception as err:  # the task's own message goes to the client
            if not isinstance(err, ValueError):
                log.exception("job %s (%s) failed", job.id, job.task)
            kind = "ValueError" if isinstance(err, ValueError) else type(err).__name__
            self._end(job, "failed", {"type": kind, "message": str(err)})
            return
        arrays = {name: {"shape": list(a.shape), "dtype": str(a.dtype), "nbytes": int(a.nbytes)}
                  for name, a in job.arrays.items()}
        self._end(job, "done", {"result": job.tree, "arrays": arrays, "server": self.server_info})

    def _preview(self, preview) -> dict[str, Any]:
        import numpy as np

        full = np.asarray(preview)
        part, stride = shrink_preview(full, self.config.preview_voxels)
        return {"npy": base64.b64encode(to_npy(part)).decode("ascii"), "stride": stride, "shape": list(full.shape)}

    def _janitor(self) -> None:
        while not self._stopping:
            time.sleep(min(5.0, self.config.result_ttl / 4))
            now = time.monotonic()
            with self._cond:
                old = [j for j in self.jobs.values()
                       if j.ended_at is not None and now - j.ended_at > self.config.result_ttl]
                for job in old:
                    del self.jobs[job.id]

    def forget(self, job: Job) -> None:
        """Delete an ended job's result now (the client has it)."""
        with self._cond:
            if job.state in ENDED:
                self.jobs.pop(job.id, None)
