"""Generator slots, the FIFO queue in front of them, and the og worker process as the event loop sees it.

A request holds a slot from the moment it is handed to the worker until the worker reports its generation ended,
so the count of generators alive (and of KV caches being written) never exceeds ``max_concurrent``. Waiting
requests are served in arrival order; one more than ``max_queue`` waiting is refused at once (``QueueFull``: HTTP
429), never left to hang. A waiting client that goes away leaves the queue; a generating one that goes away sends
a cancel, which the worker reads between two token steps.

``Worker`` starts the og worker process (``worker.run``, ``spawn`` context), waits for its model to load, and
then moves messages: a sender thread pickles requests onto the connection, a reader thread hands the worker's
events to the event loop (``loop.call_soon_threadsafe``). If the worker dies, every request in flight gets a 503.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from . import worker
from .errors import APIError
from .settings import ServeSettings

log = logging.getLogger(__name__)

STOP_SECONDS = 10  # the worker's time to finish its token steps at shutdown before it is terminated


class QueueFull(Exception):
    """Every slot is busy and ``max_queue`` requests already wait."""


class Scheduler:
    """``max_concurrent`` slots and a FIFO queue of at most ``max_queue`` waiting requests (one event loop)."""

    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        self.max_concurrent, self.max_queue = max_concurrent, max_queue
        self._free = max_concurrent
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def active(self) -> int:
        return self.max_concurrent - self._free

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def acquire(self) -> None:
        """Wait for a slot in arrival order; QueueFull when the queue is full."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        if len(self._waiting) >= self.max_queue:
            raise QueueFull
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:  # the client left while waiting
            if waiter in self._waiting:
                self._waiting.remove(waiter)
            elif waiter.done() and not waiter.cancelled():  # handed a slot in the same instant: give it back
                self.release()
            raise

    def release(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the next in line
                return
        self._free += 1


class Job:
    """One request's generation as the event loop sees it: the worker's events ("ready", info), ("text", piece),
    ("done", info), ("error", APIError), ("end",) in order, and its stage marks."""

    _ids = itertools.count(1)

    def __init__(self, start: float | None = None) -> None:
        self.id = next(self._ids)
        self.events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.ended = self.stopped = False
        self.marks: list[tuple[str, float]] = [("arrived", time.perf_counter() if start is None else start)]
        self._cancel: Any = None  # set by Worker.submit

    def mark(self, stage: str) -> None:
        """Note the end of ``stage`` (the worker's marks join at the end): ``stages`` gives each stage's time."""
        self.marks.append((stage, time.perf_counter()))

    def stages(self) -> str:
        marks = sorted(self.marks, key=lambda m: m[1])
        return ", ".join(f"{name} {(t - before) * 1e3:.1f}" for (_, before), (name, t) in itertools.pairwise(marks))

    def stop(self) -> None:
        """Cancel the generation (once; nothing once it ended): the worker stops it after its token step."""
        if not (self.ended or self.stopped) and self._cancel is not None:
            self.stopped = True
            self._cancel(self.id)

    async def next(self) -> tuple[Any, ...]:
        return await self.events.get()


def unavailable(message: str) -> APIError:
    return APIError(503, message, None, "model_unavailable", "server_error")


class Worker:
    """The og worker process: started and loaded by ``__init__`` (before the server binds its port), connected to
    an event loop by ``attach``, stopped by ``stop``."""

    def __init__(self, bundle: str | Path, settings: ServeSettings, scheduler: Scheduler, verbose: bool = False) -> None:
        self.scheduler = scheduler
        self.state = "loading"
        self._jobs: dict[int, Job] = {}
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=worker.run, name="og-worker", daemon=True, args=(
            child, str(bundle), settings.threads, settings.cache_slots, settings.max_concurrent, verbose))
        self._process.start()
        child.close()  # the worker's end lives in the worker: its exit is this end's EOF
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            message = ("failed", f"the worker process exited ({self._process.exitcode}) while loading")
        if message[0] != "loaded":
            self.stop()
            raise RuntimeError(f"cannot load {Path(bundle).name}: {message[1]}")
        self.info: dict[str, Any] = message[1]
        self.cache: dict[str, int] = self.info["cache"]
        self.state = "ok"
        log.info("og worker process %d loaded %s", self._process.pid, Path(bundle).name)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start moving messages; events go to ``loop`` from now on."""
        self._loop = loop
        threading.Thread(target=self._send_loop, name="to-worker", daemon=True).start()
        threading.Thread(target=self._read_loop, name="from-worker", daemon=True).start()

    def submit(self, chat: Any, job: Job) -> None:
        """Hand ``chat`` to the worker on a slot already acquired; the slot comes free with its ("end",) event."""
        if self.state != "ok":
            self.scheduler.release()
            raise unavailable("the model worker is not running (see the server's log)")
        job._cancel = lambda rid: self._outbox.put(("cancel", rid))
        self._jobs[job.id] = job
        self._outbox.put(("chat", job.id, chat))

    def stop(self) -> None:
        """Ask the worker to finish, terminate it after ``STOP_SECONDS``."""
        if self.state == "stopped":
            return
        self.state = "stopped"
        self._outbox.put(("stop",))
        if self._loop is None:  # never attached: no sender thread
            try:
                self._conn.send(("stop",))
            except OSError:
                pass
        self._process.join(STOP_SECONDS)
        if self._process.is_alive():
            log.warning("the og worker did not stop within %d s: terminated", STOP_SECONDS)
            self._process.terminate()
            self._process.join()

    def _send_loop(self) -> None:
        while True:
            message = self._outbox.get()
            try:
                self._conn.send(message)  # pickles here: a request's picture bytes are copied once
            except (OSError, ValueError):
                return
            if message[0] == "stop":
                return

    def _read_loop(self) -> None:
        assert self._loop is not None
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            try:
                self._loop.call_soon_threadsafe(self._on_message, message)
            except RuntimeError:  # the event loop is closed: the server is shutting down
                return
        try:
            self._loop.call_soon_threadsafe(self._on_exit)
        except RuntimeError:
            pass

    def _on_message(self, message: tuple[Any, ...]) -> None:
        rid, event = message
        job = self._jobs.get(rid)
        if job is None:
            return
        if event[0] == "error":
            event = ("error", APIError(**event[1]))
        elif event[0] == "end":
            job.marks += event[1]["marks"]
            self.cache = event[1]["cache"]
            self._finish(job)
            return
        job.events.put_nowait(event)

    def _finish(self, job: Job) -> None:
        del self._jobs[job.id]
        job.ended = True
        job.events.put_nowait(("end",))
        self.scheduler.release()

    def _on_exit(self) -> None:
        if self.state == "stopped":
            return
        self.state = "unhealthy"
        log.error("the og worker process exited (code %s); %d requests in flight answered 503",
                  self._process.exitcode, len(self._jobs))
        for job in list(self._jobs.values()):
            job.events.put_nowait(("error", unavailable("the model worker stopped during the generation")))
            self._finish(job)
