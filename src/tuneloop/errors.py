"""Errors that tuneloop reports to a user, each with what was expected and what was found.

Every error a user can cause by their input is a ``TuneloopError``; the command line prints its message
and exits with status 2, without a traceback. Anything else is a bug in tuneloop.
"""

from __future__ import annotations


class TuneloopError(Exception):
    """An error caused by the user's input or environment, with a message meant for them."""

    exit_code = 2


class ConfigError(TuneloopError):
    """One or more recipe or option values are invalid; the message lists every problem at once."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems in the configuration:\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(message)


class DataError(TuneloopError):
    """A data file is missing, unreadable or does not hold what the task needs."""


class ModelError(TuneloopError):
    """A model directory is missing or does not hold a model tuneloop can load."""


class RunNotFoundError(TuneloopError):
    """A run id, prefix or path names no run in the workspace."""
