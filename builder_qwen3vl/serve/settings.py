"""The server's settings: what the command line sets, with the defaults docs/serve.md explains."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"  # loopback: exposing the model is the operator's choice (--host 0.0.0.0)
    port: int = 8000
    api_key: str | None = None  # None: no key asked
    model_name: str | None = None  # None: the bundle folder's name
    # Two generators: on the 2-core machine of docs/serve.md (the 2B shape and the tiny model) two give as many
    # tokens/s as one (og holds the GIL in its calls), and a request's prefill starts after the other's current token
    # step instead of after its whole answer; more queue up in FIFO order.
    max_concurrent: int = 2
    max_queue: int = 16  # requests waiting for a generator; one more gets 429
    cache_slots: int = 4  # kept generators for the prompt cache (each holds a KV cache: docs/serve.md)
    max_body_mb: float = 32.0  # request bodies over this are 413, checked before parsing
    allow_remote_images: bool = False  # http(s) image URLs make the server fetch what a client names
    threads: int | None = None  # intra-op threads per og session; None: the bundle's genai_config

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * MIB)

    def check(self) -> None:
        """ValueError (one line) for settings the server cannot run with."""
        for name in ("max_concurrent", "max_queue", "cache_slots", "port"):
            value = getattr(self, name)
            if value < (1 if name in ("max_concurrent", "port") else 0):
                raise ValueError(f"--{name.replace('_', '-')} {value}: expected an integer >= "
                                 f"{1 if name in ('max_concurrent', 'port') else 0}")
        if not self.max_body_mb > 0:
            raise ValueError(f"--max-body-mb {self.max_body_mb:g}: expected a size in MiB > 0")
        if self.threads is not None and self.threads < 0:
            raise ValueError(f"--threads {self.threads}: expected an integer >= 0")
