"""Exceptions raised by cpnn."""

from __future__ import annotations


class CpnnError(ValueError):
    """Bad input to a cpnn function: the message names the argument, what was found and the fix."""


class DataFileError(OSError):
    """A data file is missing, corrupt or truncated; the message names the file."""
