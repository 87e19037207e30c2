"""The og worker process: the one og.Model, the prompt cache, and every generation (docs/serve.md).

og 0.18 holds Python's GIL inside its calls, so og runs here, in a process of its own (``multiprocessing``'s
``spawn`` context), and the HTTP process's event loop never waits for it. The HTTP process sends
("chat", request id, Chat), ("cancel", request id) and ("stop",) on a connection; ``run`` answers ("loaded", info)
or ("failed", message) once, then (request id, event) for every generation: ("ready", counts), ("text", piece)...,
("done", info) or ("error", envelope fields), and last ("end", {marks, cache}). Up to ``max_concurrent``
generations run at once, one thread each: they take turns on this process's GIL between og calls, as og allows.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..ground.logs import configure_logging
from .errors import APIError

log = logging.getLogger(__name__)


def error_fields(e: APIError) -> dict[str, Any]:
    """An APIError as plain data (its constructor's arguments), to cross the process boundary."""
    return {"status": e.status, "message": e.message, "param": e.param, "code": e.code, "type": e.type}


def cache_stats(cache: Any) -> dict[str, int]:
    return {"slots": cache.slots, "kept": len(cache), "hits": cache.hits, "misses": cache.misses}


class WorkerJob:
    """One generation inside the worker: what ``Engine.generate`` reads (``cancel``) and writes (``emit``,
    ``mark``); every event goes to the HTTP process tagged with the request id."""

    def __init__(self, rid: int, send: Any) -> None:
        self.rid, self._send = rid, send
        self.cancel = threading.Event()
        self.marks: list[tuple[str, float]] = []

    def mark(self, stage: str) -> None:
        self.marks.append((stage, time.perf_counter()))  # CLOCK_MONOTONIC: comparable with the HTTP process's marks

    def emit(self, event: tuple[Any, ...]) -> None:
        self._send((self.rid, event))


def run(conn: Any, bundle: str, threads: int | None, cache_slots: int, max_concurrent: int, verbose: bool) -> None:
    """The worker process's body: load the bundle, then serve the connection until ("stop",) or its end."""
    configure_logging(verbose)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server stops us
    lock = threading.Lock()

    def send(message: Any) -> None:
        with lock:
            try:
                conn.send(message)
            except OSError:  # the HTTP process is gone; its generations are cancelled below
                pass

    try:
        from .engine import Engine

        engine = Engine(bundle, threads=threads, cache_slots=cache_slots)
    except Exception as e:  # a broken bundle: the HTTP process reports it and exits
        log.debug("loading the bundle failed", exc_info=True)
        send(("failed", f"{type(e).__name__}: {e}"))
        return
    send(("loaded", {"special_tokens": list(engine.special_tokens), "search": engine.search,
                     "kv_bytes": engine.kv_bytes, "resize": engine.resize, "cache": cache_stats(engine.cache)}))
    jobs: dict[int, WorkerJob] = {}
    pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="generator")

    def generate(chat: Any, job: WorkerJob) -> None:
        try:
            engine.generate(chat, job)
        except APIError as e:
            job.emit(("error", error_fields(e)))
        except Exception as e:
            log.exception("generation failed")
            job.emit(("error", error_fields(APIError(500, f"internal error: {type(e).__name__}", None,
                                                     "internal_error", "server_error"))))
        finally:
            jobs.pop(job.rid, None)
            job.emit(("end", {"marks": job.marks, "cache": cache_stats(engine.cache)}))

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message[0] == "chat":
            job = jobs[message[1]] = WorkerJob(message[1], send)
            pool.submit(generate, message[2], job)
        elif message[0] == "cancel" and (job := jobs.get(message[1])) is not None:
            job.cancel.set()
        elif message[0] == "stop":
            break
    for job in list(jobs.values()):
        job.cancel.set()
    pool.shutdown(wait=True, cancel_futures=True)
