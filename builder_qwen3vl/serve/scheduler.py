"""Generator slots, the FIFO queue in front of them, and the bridge from a worker thread to the event loop.

A request holds a slot from the moment its generation starts until its worker thread returns, so the count of
generators alive (and of KV caches being written) never exceeds ``max_concurrent``. Waiting requests are served
in arrival order; one more than ``max_queue`` waiting is refused at once (``QueueFull``: HTTP 429), never left to
hang. A waiting client that goes away leaves the queue. Every job's ``cancel`` flag is read by its worker between
two token steps, so a client that disconnects frees its slot within one token's time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """Every slot is busy and ``max_queue`` requests already wait."""


class Scheduler:
    """``max_concurrent`` slots and a FIFO queue of at most ``max_queue`` waiting requests (one event loop)."""

    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        self.max_concurrent, self.max_queue = max_concurrent, max_queue
        self._free = max_concurrent
        self._waiting: deque[asyncio.Future[None]] = deque()
        # One thread per slot. og 0.18 holds the GIL inside its calls (set_inputs, generate_next_token): the slots
        # take turns call by call, each call using every core through onnxruntime's own threads (docs/serve.md).
        self._threads = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="generator")

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

    def start(self, work: Callable[[Job], None], job: Job | None = None) -> Job:
        """Run ``work(job)`` in a worker thread on a slot already acquired; the slot is released when it returns."""
        loop = asyncio.get_running_loop()
        job = job or Job(loop)
        future = loop.run_in_executor(self._threads, _run, work, job)
        future.add_done_callback(lambda _: self.release())
        return job

    def shutdown(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


def _run(work: Callable[[Job], None], job: Job) -> None:
    try:
        work(job)
    except BaseException as e:  # handed to the request's coroutine, which answers with it
        if not isinstance(e, Exception):
            log.exception("generation stopped")
        job.emit(("error", e))
    finally:
        job.emit(("end",))


class Job:
    """Events of one generation, put by its worker thread and read by its request: ("ready", info),
    ("text", piece), ("done", info), ("error", exception), ("end",)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, start: float | None = None) -> None:
        self._loop = loop
        self.events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.cancel = threading.Event()
        self.marks: list[tuple[str, float]] = [("arrived", time.perf_counter() if start is None else start)]

    def mark(self, stage: str) -> None:
        """Note the end of ``stage`` (from either side): ``stages`` gives each stage's time, for the DEBUG log."""
        self.marks.append((stage, time.perf_counter()))

    def stages(self) -> str:
        """``stage ms`` for every mark since the one before it, in the order they were made."""
        marks = sorted(self.marks, key=lambda m: m[1])
        return ", ".join(f"{name} {(t - before) * 1e3:.1f}" for (_, before), (name, t) in itertools.pairwise(marks))

    def emit(self, event: tuple[Any, ...]) -> None:
        """From the worker thread: hand ``event`` to the event loop (it may be closed at shutdown)."""
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:
            self.cancel.set()

    async def next(self) -> tuple[Any, ...]:
        return await self.events.get()
