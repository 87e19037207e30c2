"""The FastAPI app: OpenAI's ``/v1/chat/completions`` and ``/v1/models``, and ``/health``.

Before a byte of a request body is parsed, ``Gate`` checks the API key (401, ``hmac.compare_digest``) and the
body's size (413: the Content-Length header, then the bytes as they arrive). Every error is OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}``; docs/serve.md has the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import APIError
from .images import prepare
from .protocol import (
    ChatCompletionRequest,
    chunk,
    completion,
    completion_id,
    picture_chars,
    to_chat,
    usage,
)
from .scheduler import Job, QueueFull, Scheduler, Worker, unavailable
from .settings import ServeSettings

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1
DISCONNECT_POLL_SECONDS = 0.2
# An oversize body is read and dropped up to this many times the limit before the answer, so the client reads
# the 413 instead of a reset connection; past it the connection is closed.
DRAIN_FACTOR = 4
ARRIVED = "arrived"  # request.state key: when the request's first byte reached the app (time.perf_counter)


def _error(status: int, message: str, code: str | None, type: str = "invalid_request_error",
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(APIError(status, message, None, code, type).body(), status, headers=headers)


class Gate:
    """ASGI middleware: API key, then body size, before the app reads anything."""

    def __init__(self, app: Any, settings: ServeSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope.setdefault("state", {})[ARRIVED] = time.perf_counter()  # the request's stage timings start here
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = self.settings.api_key
        if key is not None and scope["path"].startswith("/v1/"):
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
                return await _error(401, "Incorrect or missing API key (send Authorization: Bearer KEY)",
                                    "invalid_api_key", "authentication_error")(scope, receive, send)
        limit = self.settings.max_body_bytes
        declared = headers.get("content-length", "")
        body, received = bytearray(), 0
        over = declared.isdigit() and int(declared) > limit
        more = scope["method"] in ("POST", "PUT", "PATCH")
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            more = message.get("more_body", False)
            piece = message.get("body", b"")
            received += len(piece)
            over = over or received > limit
            if not over:
                body += piece
                continue
            body.clear()
            if received > DRAIN_FACTOR * limit:
                break
        if over:
            return await _error(413, f"the request body is over {self.settings.max_body_mb:g} MiB (--max-body-mb)",
                                "request_too_large")(scope, receive, send)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(bundle: str | Path, settings: ServeSettings, verbose: bool = False) -> FastAPI:
    """The app serving ``bundle``: its og worker process starts here and returns once the model is loaded
    (RuntimeError if it cannot be); the app's lifespan connects it to the event loop and stops it."""
    scheduler = Scheduler(settings.max_concurrent, settings.max_queue)
    worker = Worker(bundle, settings, scheduler, verbose)
    name = settings.model_name or Path(bundle).resolve().name
    special, search, resize = worker.info["special_tokens"], worker.info["search"], worker.info["resize"]

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.attach(asyncio.get_running_loop())
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title="builder_qwen3vl serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.worker, app.state.scheduler = worker, scheduler
    app.add_middleware(Gate, settings=settings)
    started = int(time.time())

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(where) or None
        message = f"{param + ': ' if param else ''}{first.get('msg', 'invalid request')}"
        code = "invalid_json" if first.get("type") == "json_invalid" else "invalid_value"
        return JSONResponse(APIError(400, message, param, code).body(), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail), None, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal(_: Request, e: Exception) -> JSONResponse:
        log.exception("internal error")
        return _error(500, f"internal error: {type(e).__name__}", "internal_error", "server_error")

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 while the og worker runs; 503 ``unhealthy`` once it died (the load balancer's probe)."""
        body = {"status": worker.state, "model": name, "active": scheduler.active, "queued": scheduler.queued,
                "max_concurrent": scheduler.max_concurrent, "max_queue": scheduler.max_queue,
                "prompt_cache": {**worker.cache, "kv_cache_bytes_per_slot": worker.info["kv_bytes"]}}
        return JSONResponse(body, 200 if worker.state == "ok" else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": started, "owned_by": "local"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        if worker.state != "ok":
            raise unavailable("the model worker is not running (see the server's log)")
        job = Job(getattr(request.state, ARRIVED, None))
        job.mark("parse")

        def read() -> Any:  # pictures decoded and resized here, off the og worker: a thread, not the event loop
            chat = to_chat(body, special, search, allow_remote=settings.allow_remote_images,
                           max_bytes=settings.max_body_bytes)
            chat.pictures = prepare(chat.pictures, resize)
            return chat

        chat = read() if picture_chars(body) == 0 else await run_in_threadpool(read)
        job.mark("pictures")
        try:
            await scheduler.acquire()
        except QueueFull:
            raise APIError(429, f"the server is busy: {scheduler.max_queue} requests already wait (--max-queue); retry "
                           "later", None, "queue_full", "rate_limit_error",
                           {"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        job.mark("queue")
        worker.submit(chat, job)
        try:
            ready = await _ready(job)
        except BaseException:
            job.stop()
            raise
        cid, headers = completion_id(), {"x-prompt-cache": "hit" if ready["cached_tokens"] else "miss"}
        if chat.stream:
            return StreamingResponse(_sse(job, cid, name, ready, chat.include_usage), media_type="text/event-stream",
                                     headers=headers)
        watcher = asyncio.create_task(_watch(request, job))
        try:
            text, done = await _collect(job)
        finally:
            job.stop()
            watcher.cancel()
            log.debug("request stages (ms): %s", job.stages())
        use = usage(ready["prompt_tokens"], done["completion_tokens"], ready["cached_tokens"])
        return JSONResponse(completion(cid, name, text, done["finish_reason"], use), headers=headers)

    return app


async def _ready(job: Job) -> dict[str, Any]:
    """The prompt's counts once the worker has it in a generator, or the error (an APIError) that stopped it."""
    event = await job.next()
    if event[0] == "error":
        raise event[1]
    if event[0] != "ready":
        raise RuntimeError("the generation ended before its prompt was taken in")
    return event[1]


async def _collect(job: Job) -> tuple[str, dict[str, Any]]:
    pieces, done = [], None
    while (event := await job.next())[0] != "end":
        if event[0] == "text":
            pieces.append(event[1])
        elif event[0] == "done":
            done = event[1]
        elif event[0] == "error":
            raise event[1]
    if done is None:
        raise RuntimeError("the generation stopped without an answer")
    return "".join(pieces), done


async def _watch(request: Request, job: Job) -> None:
    """Cancel the job when its (non-streaming) client goes away."""
    while not (job.ended or job.stopped):
        if await request.is_disconnected():
            log.info("client gone: generation cancelled")
            job.stop()
            return
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)


def _data(doc: dict[str, Any]) -> str:
    return f"data: {json.dumps(doc, ensure_ascii=False)}\n\n"


async def _sse(job: Job, cid: str, model: str, ready: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's chat.completion.chunk events, then ``data: [DONE]``. Starlette cancels this generator when the
    client disconnects; ``finally`` then cancels the job, and its slot comes free when the worker reports the end."""
    first = True
    try:
        yield _data(chunk(cid, model, {"role": "assistant", "content": ""}))
        while (event := await job.next())[0] != "end":
            if event[0] == "text" and event[1]:
                if first:
                    job.mark("to event loop")
                yield _data(chunk(cid, model, {"content": event[1]}))
                if first:
                    job.mark("first text sent")
                    first = False
            elif event[0] == "done":
                yield _data(chunk(cid, model, {}, event[1]["finish_reason"]))
                if include_usage:
                    use = usage(ready["prompt_tokens"], event[1]["completion_tokens"], ready["cached_tokens"])
                    yield _data(chunk(cid, model, None, use=use))
            elif event[0] == "error":
                log.error("generation failed mid-stream: %s", event[1].message)
                yield _data(event[1].body())
        yield "data: [DONE]\n\n"
    finally:
        job.stop()
        log.debug("request stages (ms): %s", job.stages())
