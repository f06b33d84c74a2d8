"""User errors, the storage layer; the same concept as wmtp.errors and wmtp.data.errors.

Errors of the storage layer (user-facing: they name the URI or path)."""

from wmtp.errors import WMTPUserError


class StorageError(WMTPUserError, RuntimeError):
    """A URI or path that cannot be read or written (missing bucket/key, checksum mismatch...)."""
