"""Errors of dataset extraction, in the featwrap family (each also a builtin users already catch)."""

from __future__ import annotations

from featwrap.errors import FeatwrapError, FeatwrapValueError

__all__ = [
    "DataError",
    "OutputBusyError",
    "OutputError",
    "ResumeMismatchError",
    "ResumeWarning",
]


class DataError(FeatwrapValueError):
    """The data cannot be read: a missing or empty folder, a corrupt image, an unusable dataset."""


class ResumeMismatchError(FeatwrapValueError):
    """The output directory holds a run started with other arguments (or something else)."""


class OutputError(FeatwrapError, OSError):
    """The output directory cannot be created or written."""


class OutputBusyError(OutputError):
    """Another extraction is writing the output directory (one writer per output)."""


class ResumeWarning(UserWarning):
    """A resume adapted to what changed: samples computed again, the run's batch size kept."""
