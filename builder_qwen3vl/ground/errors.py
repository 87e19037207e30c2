"""Error types the CLI maps to exit codes: 2 for bad input or usage, 1 for internal failures."""

from __future__ import annotations


class BuildError(Exception):
    """An internal failure while building; exit code 1."""

    exit_code = 1


class InputError(BuildError):
    """The user's input (checkpoint folder, option, output folder) is not what we need; exit code 2.

    The message is one line that names the file or option and what was expected.
    """

    exit_code = 2
