"""Run one build step in a child process so its memory goes back to the OS when it ends.

The child is started with ``spawn`` (no copy of the parent's heap) and configures logging like the
parent. Its result or exception comes back through a pipe; if the parent is interrupted (Ctrl-C,
SIGTERM turned into an exception by output_folder), the child is terminated before the staging
folder is removed.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any, TypeVar

from ..ground.errors import BuildError

T = TypeVar("T")


def _child(conn: Any, fn: Callable[..., Any], kwargs: dict[str, Any], verbose: bool) -> None:
    from ..ground.logs import configure_logging

    configure_logging(verbose)
    try:
        conn.send(("ok", fn(**kwargs)))
    except BaseException as e:  # noqa: BLE001 - every failure must reach the parent as data
        conn.send(("error", e))
    finally:
        conn.close()


def run_in_child(fn: Callable[..., T], kwargs: dict[str, Any], *, verbose: bool = False) -> T:
    """``fn(**kwargs)`` in a spawned child; re-raise its exception in the parent."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, kwargs, verbose), daemon=True)
    proc.start()
    send.close()
    try:
        try:
            status, value = receive.recv()
        except EOFError:
            proc.join()
            raise BuildError(f"{fn.__name__}: the child process died (exit code {proc.exitcode})") from None
        proc.join()
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join()
    if status == "error":
        raise value
    return value
