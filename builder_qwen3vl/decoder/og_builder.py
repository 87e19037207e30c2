"""og's builder's printed output, kept out of ours: og prints progress and tqdm bars while it builds.

What reads og's source and option spellings is og_options.py; where og lacks a hook, og_adapter.py.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def og_output_to_debug_log() -> Iterator[None]:
    """og prints progress (and tqdm bars on stderr); keep it out of our output unless debugging."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        for stream, text in (("stdout", out.getvalue()), ("stderr", err.getvalue())):
            for line in text.replace("\r", "\n").splitlines():
                if line.strip():
                    log.debug("og builder %s: %s", stream, line)
