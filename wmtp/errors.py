"""User errors, the base layer; the same concept as wmtp.data.errors and wmtp.storage.errors.

The one base of every error that means "the user gave bad input" (a config key, a data line, a
checkpoint path, storage, usage, a run that cannot be placed): the CLI prints its message in one
paragraph and exits 2, with no traceback. Everything else is a bug and keeps its traceback.

Imports nothing, so every floor can raise it and the CLI can recognise it without loading torch.
"""

from __future__ import annotations


class WMTPUserError(Exception):
    """Bad input, named in the message (key, file and line, path, what to change)."""


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, WMTPUserError)


__all__ = ["WMTPUserError", "is_user_error"]
