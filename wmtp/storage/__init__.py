"""Local paths and s3:// URIs: push/pull with progress bars and SHA-256 checksums, and
`materialize` for assets given as URIs (checkpoints, tokenizers, data)."""

from wmtp.storage.errors import StorageError
from wmtp.storage.s3 import materialize, pull, push
from wmtp.storage.uri import is_remote, parse_s3

__all__ = ["StorageError", "is_remote", "materialize", "parse_s3", "pull", "push"]
