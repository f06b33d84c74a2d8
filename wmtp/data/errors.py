"""User errors, the data layer; the same concept as wmtp.errors and wmtp.storage.errors.

The one exception type for bad data input (the CLI maps it to exit code 2)."""

from __future__ import annotations

from wmtp.errors import WMTPUserError


class DataError(WMTPUserError, ValueError):
    """A user-facing data problem: a malformed file, a missing field, a bad argument."""
