"""The process state a library call hands back as it found it: ``build()`` and ``verify_bundle()`` run inside
``preserved_process_state``.

The libraries a build drives change the process when first imported: onnxruntime's quantizer module calls
``logging.basicConfig`` (a stderr handler on the root logger at INFO), onnxruntime-genai and onnxruntime's
``transformers`` package put their folders on ``sys.path``, onnxruntime-genai sets ``ORT_LIB_PATH``, og's
builder import leads torch to set ``TORCHINDUCTOR_CACHE_DIR``, numpy, torch and sympy add warning filters,
and og's progress bars start tqdm's monitor thread. None of that is the caller's choice, so it is undone
when the call returns; loggers that come into being during the call (a library configuring its own on
import) keep what their library gave them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from .permissions import current_umask

log = logging.getLogger(__name__)

ROOT_LOGGER = ""  # the root logger's key in ProcessState.loggers

# Folders third-party packages put on sys.path when first imported (they import their siblings as top-level
# modules, some lazily); later calls see them again while they run, since those packages stay imported.
_library_paths: list[str] = []


@dataclass(frozen=True)
class LoggerState:
    level: int
    handlers: tuple[logging.Handler, ...]
    filters: tuple[object, ...]
    propagate: bool
    disabled: bool

    @classmethod
    def of(cls, logger: logging.Logger) -> LoggerState:
        return cls(logger.level, tuple(logger.handlers), tuple(logger.filters), logger.propagate, logger.disabled)

    def apply(self, logger: logging.Logger) -> None:
        if logger.level != self.level:
            logger.setLevel(self.level)
        logger.handlers[:] = self.handlers
        logger.filters[:] = self.filters
        logger.propagate, logger.disabled = self.propagate, self.disabled

    def describe(self) -> str:
        handlers = ", ".join(_describe_handler(h) for h in self.handlers) or "none"
        filters = ", ".join(type(f).__name__ for f in self.filters) or "none"
        return (f"level {logging.getLevelName(self.level)}, handlers [{handlers}], filters [{filters}], "
                f"propagate {self.propagate}" + (", disabled" if self.disabled else ""))


def _describe_handler(handler: logging.Handler) -> str:
    return f"{type(handler).__name__}({logging.getLevelName(handler.level)})"


@dataclass(frozen=True)
class ProcessState:
    """What a library call must not change: environment, import path, logging, warnings, umask, cwd, threads."""

    environ: dict[str, str]
    path: tuple[str, ...]
    loggers: dict[str, LoggerState]
    logging_disable: int
    capture_warnings: bool
    warning_filters: tuple[tuple, ...]
    umask: int
    cwd: str
    threads: frozenset[threading.Thread]


def snapshot() -> ProcessState:
    return ProcessState(
        environ=dict(os.environ),
        path=tuple(sys.path),
        loggers=_logger_states(),
        logging_disable=logging.root.manager.disable,
        capture_warnings=_capturing_warnings(),
        warning_filters=tuple(warnings.filters),
        umask=current_umask(),
        cwd=os.getcwd(),
        threads=frozenset(threading.enumerate()),
    )


def _logger_states() -> dict[str, LoggerState]:
    loggers = {ROOT_LOGGER: LoggerState.of(logging.getLogger())}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):  # not a PlaceHolder
            loggers[name] = LoggerState.of(logger)
    return loggers


def _capturing_warnings() -> bool:
    return getattr(logging, "_warnings_showwarning", None) is not None


def differences(before: ProcessState, after: ProcessState) -> list[str]:
    """One readable line per difference; loggers made between the two snapshots are not compared."""
    lines = _dict_differences("os.environ", before.environ, after.environ)
    if before.path != after.path:
        lines.append(f"sys.path: {list(before.path)} -> {list(after.path)}")
    for name, state in before.loggers.items():
        now = after.loggers.get(name)
        if now != state:
            shown = name or "<root>"
            lines.append(f"logger {shown}: {state.describe()} -> {now.describe() if now else 'gone'}")
    for field in ("logging_disable", "capture_warnings", "umask", "cwd"):
        if getattr(before, field) != getattr(after, field):
            lines.append(f"{field}: {getattr(before, field)!r} -> {getattr(after, field)!r}")
    if before.warning_filters != after.warning_filters:
        added = [f for f in after.warning_filters if f not in before.warning_filters]
        removed = [f for f in before.warning_filters if f not in after.warning_filters]
        lines.append(f"warnings.filters: added {added}, removed {removed} (or reordered)")
    started = sorted(t.name for t in after.threads - before.threads if t.is_alive())
    if started:
        lines.append(f"threads still running: {started}")
    return lines


def _dict_differences(what: str, before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [f"{what}[{key!r}]: {before.get(key, '<unset>')!r} -> {after.get(key, '<unset>')!r}"
            for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)]


@contextlib.contextmanager
def preserved_process_state() -> Iterator[None]:
    """Run the block, then put back everything ``snapshot`` records (loggers made in the block keep their state).

    While the block runs, an unconfigured root logger holds a stand-in handler so that a library's
    ``logging.basicConfig`` at import does nothing, and folders libraries put on ``sys.path`` in an earlier
    call are there again.
    """
    before = snapshot()
    with warnings.catch_warnings():  # warnings.filters and showwarning come back when the block ends
        _add_library_paths()
        stand_in = _stand_in_root_handler()
        try:
            yield
        finally:
            if stand_in is not None:
                logging.getLogger().removeHandler(stand_in)
            _restore(before)


def _restore(before: ProcessState) -> None:
    _restore_environ(before.environ)
    _restore_path(before.path)
    _restore_loggers(before)
    if _capturing_warnings() != before.capture_warnings:
        logging.captureWarnings(before.capture_warnings)
    if current_umask() != before.umask:
        os.umask(before.umask)
    with contextlib.suppress(OSError):  # a working folder removed meanwhile cannot be entered again
        if os.getcwd() != before.cwd:
            os.chdir(before.cwd)
    _stop_library_threads(before.threads)


def _restore_environ(environ: dict[str, str]) -> None:
    for key in [k for k in os.environ if k not in environ]:
        del os.environ[key]
    for key, value in environ.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _add_library_paths() -> None:
    sys.path.extend(p for p in _library_paths if p not in sys.path)


def _restore_path(path: tuple[str, ...]) -> None:
    _library_paths.extend(p for p in sys.path if p not in path and p not in _library_paths)
    sys.path[:] = path


def _restore_loggers(before: ProcessState) -> None:
    logging.disable(before.logging_disable)
    for name, state in before.loggers.items():
        state.apply(logging.getLogger(name or None))


class _AsIfUnconfigured(logging.Handler):
    """On a root logger without handlers: sends records where Python sends them when logging is not configured
    (``logging.lastResort``: warnings and errors to stderr), and keeps a library's ``basicConfig`` from
    configuring it (``basicConfig`` does nothing when the root logger has a handler)."""

    def handle(self, record: logging.LogRecord) -> bool:
        last = logging.lastResort
        if last is not None and record.levelno >= last.level:
            last.handle(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # handle() does the work
        pass


def _stand_in_root_handler() -> logging.Handler | None:
    root = logging.getLogger()
    if root.handlers:
        return None
    stand_in = _AsIfUnconfigured()
    root.addHandler(stand_in)
    return stand_in


def _stop_library_threads(before: frozenset[threading.Thread]) -> None:
    """Stop tqdm's monitor thread if a progress bar during the call started it (tqdm starts a new one when a
    later bar needs it); any other thread left running is a bug worth a debug line."""
    for thread in threading.enumerate():
        if thread in before or not thread.is_alive():
            continue
        if type(thread).__name__ == "TMonitor" and hasattr(thread, "exit"):
            thread.exit()
        else:
            log.debug("thread %s started during the call is still running", thread.name)
