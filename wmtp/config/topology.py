"""Checks that depend on how many nodes a run spans (pure functions: the config validator and the
launcher, which knows the Ray cluster's node count, call the same one)."""

from __future__ import annotations

SHARED_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "az://", "hdfs://")


def storage_path_problem(storage_path: str | None, n_nodes: int) -> str | None:
    """Why `orchestration.storage_path` cannot hold a run on `n_nodes` nodes, or None when it can.

    Ray Train gathers every rank's checkpoint shards under the storage path: on more than one node
    it must be storage that every node sees. The default (`<output_dir>/ray`, relative) and other
    relative paths are node-local; an object store URI or an absolute path on a shared filesystem
    (NFS, Lustre, GCS FUSE) works.
    """
    if n_nodes <= 1:
        return None
    if storage_path is None:
        return (f"orchestration.storage_path is not set: a run on {n_nodes} nodes needs storage every node sees "
                f"(the default <output_dir>/ray is node-local); set orchestration.storage_path=s3://BUCKET/wmtp/ray "
                f"or an absolute path on a shared filesystem")
    if storage_path.startswith(SHARED_SCHEMES) or storage_path.startswith("/"):
        return None
    return (f"orchestration.storage_path={storage_path!r} is a relative (node-local) path: a run on {n_nodes} nodes "
            f"needs storage every node sees (s3://BUCKET/wmtp/ray, or an absolute path on a shared filesystem)")


__all__ = ["SHARED_SCHEMES", "storage_path_problem"]
