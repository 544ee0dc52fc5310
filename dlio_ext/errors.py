"""The one exception a user sees: a single line, exit status 2, no traceback."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input or an unusable environment: what is wrong and how to fix it, in one line."""

    exit_code = 2


class Failed(UsageError):
    """A failure every rank knows of alike that is not the user's input (a bug found before the
    run started): one line, exit status 3."""

    exit_code = 3
