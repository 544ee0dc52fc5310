"""The one exception a user sees: a single line, exit status 2, no traceback."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input or an unusable environment: what is wrong and how to fix it, in one line."""

    exit_code = 2
