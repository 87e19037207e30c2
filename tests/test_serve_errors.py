"""Bad requests get OpenAI's error envelope with the documented status (docs/serve.md), and the server answers the
next good request; a dead og worker process turns requests and /health into 503."""

from __future__ import annotations

import base64
import os
import signal
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_helpers import Server, ask, data_url, serving

from builder_qwen3vl.runtime.image_io import png_bytes
from builder_qwen3vl.shipped import shapes_task

SAMPLE = shapes_task.make_sample(shapes_task.HELD_OUT_SEED, 30)


@pytest.fixture(scope="module")
def server(shipped_fp32_bundle: Path) -> Iterator[Server]:
    with serving(shipped_fp32_bundle, "--max-body-mb", "1") as s:
        yield s


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (no pixel data): refused from the header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def image_message(url: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                        {"type": "text", "text": "What is it?"}]}


GOOD = {"model": "m", "messages": [ask(SAMPLE.image, SAMPLE.question)], "temperature": 0}
BAD = [  # (id, body, key, status, code)
    ("broken-base64", {"messages": [image_message("data:image/png;base64,iVBOR%%%w0KGgo")]}, "key", 400, "invalid_base64"),
    ("text-as-image", {"messages": [image_message(data_url(b"hello, I am text", "image/png"))]}, "key", 400, "invalid_image"),
    ("over-pixel-limit", {"messages": [image_message(data_url(png_header(20000, 20000)))]}, "key", 400, "invalid_image"),
    ("truncated-png", {"messages": [image_message(data_url(png_bytes(SAMPLE.image.resize((256, 256)))[:2000]))]}, "key",
     400, "invalid_image"),
    ("remote-url", {"messages": [image_message("http://127.0.0.1:9/cat.png")]}, "key", 400, "remote_url_refused"),
    ("over-max-length", {"messages": [{"role": "user", "content": "why " * 5000}]}, "key", 400, "context_length_exceeded"),
    ("n-2", {**GOOD, "n": 2}, "key", 400, "unsupported_parameter"),
    ("tools", {**GOOD, "tools": [{"type": "function", "function": {"name": "f"}}]}, "key", 400, "unsupported_parameter"),
    ("logprobs", {**GOOD, "logprobs": True}, "key", 400, "unsupported_parameter"),
    ("json-schema", {**GOOD, "response_format": {"type": "json_object"}}, "key", 400, "unsupported_parameter"),
    ("bad-json", b'{"messages": [', "key", 400, "invalid_json"),
    ("bad-schema", {"messages": [{"role": "wizard", "content": "hi"}]}, "key", 400, "invalid_value"),
    ("no-messages", {"messages": []}, "key", 400, "invalid_value"),
    ("oversize-body", {"messages": [{"role": "user", "content": "x" * (1536 * 1024)}]}, "key", 413, "request_too_large"),
    ("wrong-key", GOOD, "wrong", 401, "invalid_api_key"),
    ("no-key", GOOD, None, 401, "invalid_api_key"),
]


@pytest.mark.parametrize("body, key, status, code", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_request_gets_its_status_and_the_server_goes_on(server: Server, body: Any, key: str | None, status: int,
                                                            code: str) -> None:
    from serve_helpers import KEY

    response = server.post(body, key=KEY if key == "key" else key)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    assert "\n" not in error["message"]
    good = server.post(GOOD)
    assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"]


def test_bad_image_names_the_parameter(server: Server) -> None:
    body = {"messages": [image_message("data:image/png;base64," + base64.b64encode(b"not a picture").decode())]}
    error = server.post(body).json()["error"]
    assert error["param"] == "messages[0].content[0].image_url.url"
    assert error["message"].startswith("messages[0].content[0].image_url.url: not an image file"), error["message"]


def test_openai_client_raises_its_status_errors(server: Server) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        server.client().chat.completions.create(model="m", messages=GOOD["messages"], n=2)
    assert caught.value.status_code == 400 and caught.value.code == "unsupported_parameter"
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()


def worker_pid(server: Server) -> int:
    """The og worker process: the server's child started by multiprocessing's spawn."""
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    spawned = [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(spawned) == 1, children
    return spawned[0]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker through /proc (Linux)")
def test_a_dead_worker_answers_503(shipped_fp32_bundle: Path) -> None:
    long = {"model": "m", "messages": [{"role": "user", "content": "Is there a circle?"}], "max_tokens": 3000,
            "temperature": 0, "ignore_eos": True}
    with serving(shipped_fp32_bundle) as server:
        replies = []
        in_flight = threading.Thread(target=lambda: replies.append(server.post(long)))
        in_flight.start()
        time.sleep(1)  # generating
        os.kill(worker_pid(server), signal.SIGKILL)
        in_flight.join(30)
        assert replies and replies[0].status_code == 503, replies
        assert replies[0].json()["error"]["code"] == "model_unavailable"
        health = httpx.get(server.base + "/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        refused = server.post(GOOD)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_unavailable"
