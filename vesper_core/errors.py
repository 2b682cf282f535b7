"""One error family for every Vesper package.

A message says what failed, the offending value, and what to do next. The CLI prints
``Error: <message>`` on stderr and exits non-zero; libraries only raise.
"""

from __future__ import annotations


class VesperError(Exception):
    """Base class of every error Vesper raises on purpose (bad input, missing backend, ...)."""

    exit_code = 1


class ConfigError(VesperError, ValueError):
    """A configuration value or combination is invalid."""


class DataError(VesperError):
    """A dataset file is missing, empty, unreadable or malformed."""


class CacheFormatError(DataError):
    """A token cache file does not follow the VSPR layout."""


class CheckpointError(VesperError):
    """A checkpoint is missing, unreadable, or does not match the model."""


class BackendUnavailableError(VesperError):
    """An explicitly requested kernel backend cannot run here."""


class UnknownNameError(VesperError, KeyError):
    """A name looked up in a registry does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NotImplementedFeatureError(VesperError, NotImplementedError):
    """A documented feature that this version does not build (the README lists them)."""
