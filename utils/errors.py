"""The root of the project's errors, and how a command line reports one.

Every error the project raises on purpose derives from ``QuantFaceError`` and carries a message that
names the file, field or record and what to do.  A command line catches the root, prints that message as
one ``error: ...`` line and exits with the error's ``exit_code``: 2 for bad input (``InputError``: a
file, setting or path the user gave), 1 for a run that failed on the way (``RunError``: the disk filled
up, the run was interrupted or diverged).  Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys


class QuantFaceError(Exception):
    """An error the project raises on purpose; ``exit_code`` is what a command line exits with."""

    exit_code = 1


class InputError(QuantFaceError):
    """Bad input: a file, setting or path given by the user cannot be used; fixing the input fixes it."""

    exit_code = 2


class RunError(QuantFaceError):
    """A run with good input failed on the way (disk full, interrupted, diverged); the message says what
    was kept and how to continue."""

    exit_code = 1


def report(exc: QuantFaceError, prefix: str = "error") -> int:
    """Print ``exc`` as one ``<prefix>: message`` line on stderr and return its exit code, so an entry
    point ends with ``return report(exc)``."""
    print(f"{prefix}: {exc}", file=sys.stderr, flush=True)
    return exc.exit_code
