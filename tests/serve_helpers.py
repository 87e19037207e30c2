"""Starting ``python -m builder_qwen3vl serve`` on a free loopback port and talking to it, for the serve tests."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

CHAT = Path(__file__).resolve().parents[1] / "examples" / "chat.py"
KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc, self.port = proc, port
        self.base = f"http://127.0.0.1:{port}"

    def client(self, api_key: str = KEY) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=self.base + "/v1", api_key=api_key, max_retries=0, timeout=120)

    def health(self) -> dict[str, Any]:
        return httpx.get(self.base + "/health", timeout=10).json()

    def post(self, body: Any, key: str | None = KEY, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        kw.setdefault("timeout", 120)
        if isinstance(body, (bytes, str)):
            return httpx.post(self.base + "/v1/chat/completions", content=body,
                              headers={**headers, "Content-Type": "application/json"}, **kw)
        return httpx.post(self.base + "/v1/chat/completions", json=body, headers=headers, **kw)


@contextmanager
def serving(bundle: Path, *args: str, blocked: Path | None = None) -> Iterator[Server]:
    """The server on a free port until the block ends; ``blocked``: a folder put first on PYTHONPATH."""
    port = free_port()
    env = dict(os.environ)
    if blocked is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(blocked), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen([sys.executable, "-m", "builder_qwen3vl", "serve", str(bundle), "--port", str(port),
                             "--api-key", KEY, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    server = Server(proc, port)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited {proc.returncode}: {proc.stdout.read()}")
            try:
                if httpx.get(server.base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /health within 120 s"
            time.sleep(0.3)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def data_url(image: Image.Image | bytes, mime: str = "image/png") -> str:
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        image = buf.getvalue()
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


def ask(image: Image.Image | bytes | None, question: str) -> dict[str, Any]:
    """One user message: the picture first, then the question (the order examples/chat.py writes)."""
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": data_url(image)}}] if image is not None else []
    return {"role": "user", "content": [*parts, {"type": "text", "text": question}]}


def chat_py(bundle: Path, picture: Path, question: str, max_new_tokens: int = 64, option: str = "--image") -> str:
    """What examples/chat.py answers about ``picture`` (``option`` --video: a video file)."""
    proc = subprocess.run([sys.executable, str(CHAT), "-m", str(bundle), option, str(picture), "--prompt", question,
                           "--max-new-tokens", str(max_new_tokens)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.rstrip("\n")


def write_clip(path: Path, frames: int = 8, fps: int = 4, width: int = 96, height: int = 64) -> Path:
    """An MPEG-4 clip (PyAV) of a square crossing a gradient: consecutive frames differ, as in a real clip."""
    import av
    import numpy as np
    from PIL import ImageDraw

    ramp = np.linspace(40, 200, width, dtype=np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            base = np.stack([np.tile(ramp, (height, 1)), np.full((height, width), 30.0 + 20 * i),
                             np.tile(ramp[::-1], (height, 1))], -1)
            img = Image.fromarray(base.astype(np.uint8), "RGB")
            side = min(width, height) // 3
            x = (width - side) * i // max(1, frames - 1)
            ImageDraw.Draw(img).rectangle((x, height // 3, x + side, height // 3 + side), fill=(220, 40, 90))
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
