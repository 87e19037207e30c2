"""Logging: the command line's console (our steps at INFO, third-party chatter only with -v), the quieting of
the libraries a build drives, progress lines and heartbeats.

torch installs its own handlers on the ``torch`` loggers (they do not propagate), so the command line quiets
them with torch's own switch (``TORCH_LOGS`` before import, the logger's level after); Python ``warnings``
raised inside torch/transformers/onnx (FutureWarning, DeprecationWarning) are dropped at default verbosity
and routed to the log with -v. ``build()`` called from Python quiets the libraries only while it runs
(``quiet_libraries``), and leaves the caller's logging as it found it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator

PACKAGE_LOGGER = "builder_qwen3vl"
_HANDLER_MARK = "_builder_qwen3vl_handler"
# A step that runs longer than this gets "still running" lines, so a long export never looks hung.
HEARTBEAT_SECONDS = 10.0

log = logging.getLogger(PACKAGE_LOGGER)
# The root logger's level before a verbose configure_logging set DEBUG (None: no verbose setup in place).
_root_level_before_verbose: int | None = None


def configure_logging(verbose: bool) -> None:
    """Route our messages to stderr; show other libraries' logs and warnings only when ``verbose``.

    This configures the process (it is what the command line, the app, does); a library caller configures
    logging itself. Safe to call more than once (tests call the CLI's ``main`` repeatedly): it first undoes
    what an earlier call set up (its handlers, and a verbose call's root level and warning capture).
    """
    _undo_configure_logging()
    root = logging.getLogger()
    if verbose:
        global _root_level_before_verbose
        _root_level_before_verbose = root.level
        _add_handler(root, logging.DEBUG, "%(asctime)s %(levelname)s %(name)s: %(message)s")
        root.setLevel(logging.DEBUG)
        log.setLevel(logging.DEBUG)
        logging.captureWarnings(True)
        return
    log.setLevel(logging.INFO)
    log.propagate = True  # so callers' own handlers (pytest's caplog, an application's log file) still see us
    _add_handler(log, logging.INFO, "%(message)s")
    # Other libraries: errors only (their warnings would otherwise interleave with our step lines).
    others = _add_handler(root, logging.ERROR, "%(levelname)s %(name)s: %(message)s")
    others.addFilter(lambda record: not record.name.startswith(PACKAGE_LOGGER))  # ours printed above already
    warnings.filterwarnings("ignore")
    _quiet_torch()
    _quiet_transformers()


def _undo_configure_logging() -> None:
    global _root_level_before_verbose
    root = logging.getLogger()
    for logger in (log, root):
        for handler in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
            logger.removeHandler(handler)
    if _root_level_before_verbose is not None:
        root.setLevel(_root_level_before_verbose)
        logging.captureWarnings(False)
        _root_level_before_verbose = None


def _add_handler(logger: logging.Logger, level: int, fmt: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(fmt))
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)
    return handler


def _quiet_transformers() -> None:
    # e.g. "[transformers] Model config: bos_token_id must be ..." (transformers has its own handler).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        with contextlib.suppress(Exception):
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()


def _quiet_torch() -> None:
    # e.g. "torchvision is not installed. Skipping torchvision::nms" from torch.onnx's registry.
    if "torch" in sys.modules:  # already configured from the environment: its child loggers inherit "torch"
        logging.getLogger("torch").setLevel(logging.ERROR)
    else:
        os.environ.setdefault("TORCH_LOGS", "-all")


# Loggers of the libraries a build drives; their INFO lines (onnxruntime's quantizer reports every tensor)
# would bury our step lines.
LIBRARY_LOGGERS = ("onnxruntime", "onnxscript", "onnx_ir", "onnx", "torch", "transformers", "huggingface_hub",
                   "onnxruntime_genai")
# Libraries that set their loggers' levels when first imported (torch from TORCH_LOGS, transformers from
# TRANSFORMERS_VERBOSITY): imported before the levels are raised, so their import neither undoes the
# quieting nor is undone by its end.
SELF_CONFIGURING_LIBRARIES = ("torch", "transformers")


class _DropRootChatter(logging.Filter):
    """onnxruntime's quantizer logs through the root logger itself (``logging.info``): drop those below ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "root" or record.levelno >= logging.ERROR


@contextlib.contextmanager
def quiet_libraries(verbose: bool) -> Iterator[None]:
    """During the block, other libraries log errors only and their Python warnings are dropped, unless ``verbose``.

    Every change is undone when the block ends: the library loggers' levels (a level someone else set during
    the block is kept), the root logger's filter and the warning filters. A logger the application set below
    WARNING is left alone: that is its way of asking for those lines.
    """
    if verbose:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _import_self_configuring_libraries()
        raised = _raise_library_levels()
        root_filter = _DropRootChatter()
        logging.getLogger().addFilter(root_filter)
        try:
            yield
        finally:
            logging.getLogger().removeFilter(root_filter)
            _lower_library_levels(raised)


def _import_self_configuring_libraries() -> None:
    for name in SELF_CONFIGURING_LIBRARIES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _raise_library_levels() -> dict[logging.Logger, int]:
    """Set each library logger the application left at WARNING or above (or unset) to ERROR; return the old levels."""
    raised = {}
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level >= logging.WARNING:
            raised[logger] = logger.level
            logger.setLevel(logging.ERROR)
    return raised


def _lower_library_levels(raised: dict[logging.Logger, int]) -> None:
    for logger, level in raised.items():
        if logger.level == logging.ERROR:  # else a library import during the block configured it: keep that
            logger.setLevel(level)


# The last progress line of the running step and when it was logged: the heartbeat repeats it, and stays
# quiet while a step reports progress itself.
_last_progress: tuple[float, str] = (0.0, "")


class Progress:
    """Progress lines a person can read: "<what>: 12 of 27 blocks, 1.2 of 2.4 GB" at most every ``every`` seconds.

    ``update`` counts items and bytes; the first call, the last item and any call ``every`` seconds after the
    previous line log one. The heartbeat of the running step repeats the latest line.
    """

    def __init__(self, what: str, total: int | None = None, unit: str = "", total_bytes: int | None = None,
                 every: float = HEARTBEAT_SECONDS, logger: logging.Logger | None = None) -> None:
        self.what, self.total, self.unit, self.total_bytes, self.every = what, total, unit, total_bytes, every
        self.logger = logger or log
        self.done = 0
        self.bytes = 0
        self._logged_at: float | None = None

    def update(self, items: int = 1, nbytes: int = 0, *, done: int | None = None, done_bytes: int | None = None) -> None:
        self.done = done if done is not None else self.done + items
        self.bytes = done_bytes if done_bytes is not None else self.bytes + nbytes
        now = time.perf_counter()
        last = self.total is not None and self.done >= self.total
        if self._logged_at is None or last or now - self._logged_at >= self.every:
            self._logged_at = now
            self.logger.info("%s", self.line())

    def finish(self) -> None:
        """Log the final line (unless the last update just did)."""
        if self._logged_at is None or not (self.total is not None and self.done >= self.total):
            self._logged_at = time.perf_counter()
            self.logger.info("%s", self.line())

    def line(self) -> str:
        parts = []
        if self.total is not None:
            parts.append(f"{self.done} of {self.total}{' ' + self.unit if self.unit else ''}")
        elif self.unit:
            parts.append(f"{self.done} {self.unit}")
        if self.total_bytes:
            parts.append(f"{_gb(self.bytes)} of {_gb(self.total_bytes)}")
        elif self.bytes:
            parts.append(f"{_gb(self.bytes)} written")
        text = f"{self.what}: {', '.join(parts)}" if parts else self.what
        global _last_progress
        _last_progress = (time.perf_counter(), text)
        return text


def progress_line(text: str, logger: logging.Logger | None = None) -> None:
    """Log one progress line (repeated by the running step's heartbeat)."""
    global _last_progress
    _last_progress = (time.perf_counter(), text)
    (logger or log).info("%s", text)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@contextlib.contextmanager
def heartbeat(name: str, every: float = HEARTBEAT_SECONDS, logger: logging.Logger | None = None) -> Iterator[None]:
    """Log "<name> still running (N s)" every ``every`` seconds until the block ends, with the step's latest
    progress line (``Progress``) if it has one; silent while the step logs progress lines itself."""
    logger = logger or log
    done = threading.Event()
    start = time.perf_counter()

    def beat() -> None:
        while not done.wait(every):
            at, text = _last_progress
            if at >= start and time.perf_counter() - at < every:
                continue  # the step itself said what it is doing just now
            suffix = f"; last: {text}" if at >= start and text else ""
            logger.info("%s still running (%.0f s)%s", name, time.perf_counter() - start, suffix)

    thread = threading.Thread(target=beat, name=f"heartbeat:{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
