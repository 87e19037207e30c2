"""OpenAI's chat completion request and response shapes, as data, and their checks.

Requests are parsed by pydantic (FastAPI's validator) into ``ChatCompletionRequest``, then ``to_chat`` turns one
into a ``Chat``: the messages as the chat template takes them (special tokens typed by a client kept as text,
a tag per picture where its content part stands) and the pictures' bytes with their SHA-256. What the server
does not do (``n`` > 1, tools, logprobs, a response format other than text) is refused by name, not ignored.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..ground.tokens import IMAGE_TAG, VIDEO_TAG, plain_text
from .errors import APIError
from .images import Picture, read_url


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI's fields the server does not use (e.g. "name", "detail")


class ImageURL(_Open):
    url: str


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoPart(_Open):
    type: Literal["video_url"]  # vLLM's content part for a video
    video_url: ImageURL


Part = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None


class StreamOptions(_Open):
    include_usage: bool = False


class ChatCompletionRequest(_Open):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)  # vLLM's extension; 0: no top-k limit
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1)
    min_tokens: int | None = Field(default=None, ge=0)  # vLLM's extension: no end of turn before this many
    ignore_eos: bool = False  # vLLM's extension: min_tokens = max_tokens
    # Refused when set to anything that asks for work the server does not do.
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


DEFAULT_MAX_TOKENS = 256  # an answer's budget when the request gives none (OpenAI: up to the context)


@dataclass
class Chat:
    """One request, ready for the engine."""

    messages: list[dict[str, str]]  # role and content, content with one IMAGE_TAG / VIDEO_TAG per picture
    pictures: list[Picture]
    max_tokens: int
    sampling: dict[str, Any]  # og search options beyond max_length: do_sample, temperature, top_p, top_k, random_seed
    stop: list[str] = field(default_factory=list)
    min_tokens: int = 0
    stream: bool = False
    include_usage: bool = False


def unsupported(req: ChatCompletionRequest) -> None:
    """Refuse, by parameter name, what the server would otherwise silently not do."""
    if req.n not in (None, 1):
        raise APIError(400, f"n={req.n}: only one choice per request is generated (n=1)", "n", "unsupported_parameter")
    for name in ("tools", "functions"):
        if getattr(req, name):
            raise APIError(400, f"{name}: tool calling is not supported", name, "unsupported_parameter")
    if req.tool_choice not in (None, "none"):
        raise APIError(400, "tool_choice: tool calling is not supported", "tool_choice", "unsupported_parameter")
    if req.response_format and req.response_format.get("type") != "text":
        raise APIError(400, f"response_format type {req.response_format.get('type')!r}: only 'text' is supported",
                       "response_format", "unsupported_parameter")
    if req.logprobs or req.top_logprobs:
        raise APIError(400, "logprobs: not supported", "logprobs", "unsupported_parameter")


def sampling_options(req: ChatCompletionRequest, bundle_search: dict[str, Any]) -> dict[str, Any]:
    """og search options. temperature 0: greedy. No temperature: the bundle's genai_config ``search`` (the
    checkpoint's generation_config, as vLLM does); top_p / top_k given alone refine it."""
    temperature = req.temperature if req.temperature is not None else (
        float(bundle_search.get("temperature", 1.0)) if bundle_search.get("do_sample") else 0.0)
    if temperature == 0:
        return {"do_sample": False}
    options: dict[str, Any] = {"do_sample": True, "temperature": float(temperature),
                               "top_p": float(req.top_p if req.top_p is not None else bundle_search.get("top_p", 1.0)),
                               "top_k": int(req.top_k if req.top_k is not None else bundle_search.get("top_k", 0))}
    if req.seed is not None:
        options["random_seed"] = int(req.seed)
    return options


def picture_chars(req: ChatCompletionRequest) -> int | None:
    """The characters of every picture URL of ``req``; None when one is not a ``data:`` URL (a fetch)."""
    total = 0
    for message in req.messages:
        for part in message.content if isinstance(message.content, list) else ():
            link = part.image_url if isinstance(part, ImagePart) else part.video_url if isinstance(part, VideoPart) else None
            if link is not None:
                if not link.url.startswith("data:"):
                    return None
                total += len(link.url)
    return total


def to_chat(req: ChatCompletionRequest, special_tokens: Iterable[str], bundle_search: dict[str, Any], *,
            allow_remote: bool = False, max_bytes: int) -> Chat:
    """``req`` checked and turned into a ``Chat``; APIError (400, naming the parameter) for what cannot be served."""
    unsupported(req)
    special = tuple(special_tokens)
    messages, pictures = [], []
    for i, message in enumerate(req.messages):
        role = "system" if message.role == "developer" else message.role
        content = message.content
        if content is None or isinstance(content, str):
            messages.append({"role": role, "content": plain_text(content or "", special)})
            continue
        text = []
        for j, part in enumerate(content):
            param = f"messages[{i}].content[{j}]"
            if isinstance(part, TextPart):
                text.append(plain_text(part.text, special))
                continue
            if role != "user":
                raise APIError(400, f"{param}: pictures go in user messages, not {message.role}", param)
            if isinstance(part, ImagePart):
                pictures.append(read_url(part.image_url.url, "image", f"{param}.image_url.url", allow_remote, max_bytes))
                text.append(IMAGE_TAG)
            else:
                pictures.append(read_url(part.video_url.url, "video", f"{param}.video_url.url", allow_remote, max_bytes))
                text.append(VIDEO_TAG)
        messages.append({"role": role, "content": "".join(text)})
    if messages[-1]["role"] == "assistant":
        raise APIError(400, "messages: the last message is the assistant's; expected a user message to answer",
                       "messages")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise APIError(400, "stop: up to 4 non-empty strings", "stop")
    max_tokens = req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS
    min_tokens = max_tokens if req.ignore_eos else min(req.min_tokens or 0, max_tokens)
    return Chat(messages, pictures, max_tokens, sampling_options(req, bundle_search), stop, min_tokens, req.stream,
                bool(req.stream_options and req.stream_options.include_usage))


class StopText:
    """Text released as it is generated, held back while it may still become one of the ``stop`` strings."""

    def __init__(self, stop: list[str]) -> None:
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.text = ""
        self.sent = 0

    def push(self, piece: str) -> tuple[str, bool]:
        """Add ``piece``; return the text now safe to send and whether a stop string ended the answer."""
        self.text += piece
        hits = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            return self.flush(), True
        safe = len(self.text) - self.hold
        if safe <= self.sent:
            return "", False
        out, self.sent = self.text[self.sent:safe], safe
        return out, False

    def flush(self) -> str:
        out, self.sent = self.text[self.sent:], len(self.text)
        return out


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def completion(cid: str, model: str, text: str, finish_reason: str, use: dict[str, Any]) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}], "usage": use}


def chunk(cid: str, model: str, delta: dict[str, Any] | None, finish_reason: str | None = None,
          use: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``delta`` None: the usage chunk (no choices), as OpenAI sends it last."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    out = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model, "choices": choices}
    if delta is None:
        out["usage"] = use
    return out
