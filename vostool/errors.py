"""User-facing errors.

Every problem a user can cause (bad input file, unknown model, unwritable output) is raised as a
:class:`VostoolError`. The CLI prints its message on one line and exits with its ``exit_code``
(2 for usage and input errors); library users catch it like any other exception.
"""

from __future__ import annotations

from pathlib import Path


class VostoolError(Exception):
    """An error caused by the user's input or environment, with a one-line message."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        super().__init__(f"{path}: {message}" if path is not None else message)


class InputError(VostoolError):
    """A file or folder given to vostool is missing, unreadable or malformed."""


class ModelError(VostoolError):
    """Unknown model name, or weights that are not a checkpoint of that model."""


class UnknownModelError(ModelError):
    """A model name vostool cannot build (a typo, or a method whose network is not implemented yet)."""


class OutputError(VostoolError):
    """An output location cannot be written."""


class VostoolWarning(UserWarning):
    """Something a user should know about a run that still goes ahead (the CLI prints it on one line)."""
