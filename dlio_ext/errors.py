"""The one exception a user sees: a single line, exit status 2, no traceback."""

from __future__ import annotations

import argparse
from typing import NoReturn


class UsageError(Exception):
    """Bad input or an unusable environment: what is wrong and how to fix it, in one line."""

    exit_code = 2


class Failed(UsageError):
    """A failure every rank knows of alike that is not the user's input (a bug found before the
    run started): one line, exit status 3."""

    exit_code = 3


class OneLineParser(argparse.ArgumentParser):
    """argparse for the subcommands: a bad argument is one UsageError line (exit 2), not
    argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}; see {self.prog} --help")
