"""Connecting to Ray and the environment Ray Train needs (the only place that calls `ray.init`)."""

from __future__ import annotations

import atexit
import logging
import math
import os
import signal
import socket
import threading

import ray
import ray.job_config

from wmtp.config.schema import WMTPConfig
from wmtp.orchestration.resources import EXPERIENCE_ACTOR_CPUS, run_resources  # noqa: F401 (re-exported)

# Ray Train V2 reads these in the driver and passes them on to its controller and workers itself
# (ray.train.v2 ENV_VARS_TO_PROPAGATE), so the driver's os.environ is the one place to set them —
# never a ray.init runtime_env, which would conflict with a submitted job's runtime_env.
# - HEALTH_CHECK_INTERVAL_S: the controller polls workers this often; a worker's report waits in a
#   one-slot queue until the next poll takes it, so only back-to-back reports (a checkpoint after a
#   step report) wait, for at most one interval. 2 s (Ray's default) per checkpoint is slow; 0.1 s
#   made 3,278 poll tasks in 5 minutes in the dashboard; 0.5 s: ≤ 0.5 s per checkpoint, 120 tasks/min.
# - ENABLE_STATE_TRACKING: the dashboard's Train tab (runs, attempts, workers).
TRAIN_ENV_DEFAULTS: dict[str, str] = {
    "RAY_TRAIN_V2_ENABLED": "1",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",
}

# The Prometheus port a cluster wmtp starts exports metrics on (the cluster files use it too);
# another free port when it is taken. WMTP_METRICS_PORT changes it.
DEFAULT_METRICS_PORT = 8080


def apply_train_env() -> None:
    """Set Ray Train's environment defaults where the user (or the job's runtime_env) has not."""
    for key, value in TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def ensure_ray(address: str | None = None, *, local_cpus: float | None = None, job_name: str | None = None) -> None:
    """Join `address` (or `RAY_ADDRESS`, or start a fresh local cluster) unless Ray is initialised.

    `ray job submit` sets `RAY_ADDRESS` for the driver; `address="auto"` joins a cluster started
    with `ray start` on this machine. Joining passes no runtime_env: the job's own (or the
    cluster's) applies unchanged. Without an address, a fresh local cluster (`start_local_head`,
    every port free): a bare `ray.init()` would look for a running cluster first and hang on a
    stale `ray_current_cluster` file left by `ray stop`. Tests start their own cluster first.
    local_cpus: logical CPUs of a fresh local cluster, at least this machine's cores; a run asks
    for what its workers and experience actors reserve, so a 2-core laptop still schedules them.
    job_name: the dashboard's job Name (metadata `job_name`) of a plain `wmtp train` driver; a
    submitted job is named by `ray job submit --metadata-json '{"job_name": ...}'`.
    """
    apply_train_env()
    if ray.is_initialized():
        return
    # ray.init replaces the SIGTERM handler by `sys.exit(15)` (a FAILED run with Ray's dump): keep
    # the caller's (the CLI's: SIGTERM is a stop, KILLED; wmtp.orchestration.console).
    keep = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        _init_ray(address, local_cpus, job_name)
    finally:
        if keep is not None:
            signal.signal(signal.SIGTERM, keep)


def _init_ray(address: str | None, local_cpus: float | None, job_name: str | None) -> None:
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict = {}
    # Workers' stdout (Ray Train's per-report echo, every rank's lines, controller notices) reaches
    # the driver only with `--verbose`; otherwise it stays in the Ray session logs and the driver
    # shows wmtp's console (wmtp.orchestration.console).
    verbose = os.environ.get("WMTP_VERBOSE") == "1"
    if not verbose:
        kwargs["logging_level"] = logging.WARNING
    if job_name:  # a submitted job's own metadata takes precedence (ray.init merges it over this)
        kwargs["job_config"] = ray.job_config.JobConfig(metadata={"job_name": job_name})
    if address != "local":
        ctx = ray.init(address=address, log_to_driver=verbose, **kwargs)
        if ctx.dashboard_url:  # the `ray job submit --address` of the summary's next command (wmtp.tracking.rerun)
            os.environ.setdefault("WMTP_DASHBOARD_URL", "http://" + ctx.dashboard_url.removeprefix("http://"))
        return
    if local_cpus is not None:
        kwargs["num_cpus"] = max(os.cpu_count() or 1, math.ceil(local_cpus))
    # A fresh cluster's raylet starts one idle Python worker per CPU when the driver connects. A
    # run uses none of them but the console relay: Ray Train's controller, workers and helper
    # actors carry a runtime_env (its propagated env vars) and get fresh processes, so on a
    # 2-core laptop the prestarted ones only compete with the run's own start (benchmarks/startup.py).
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    port = metrics_port()
    head = start_local_head(num_cpus=kwargs.pop("num_cpus", None), metrics_export_port=port)
    atexit.register(_end_local_head, head)
    ctx = ray.init(address=head.address, log_to_driver=verbose, **kwargs)
    dashboard = ctx.dashboard_url or "off (pip install 'ray[default]')"
    print(f"[wmtp] started a local Ray cluster: dashboard http://{dashboard.removeprefix('http://')}, "
          f"metrics http://127.0.0.1:{port}/metrics", flush=True)


def start_local_head(*, num_cpus: int | None = None, metrics_export_port: int | None = None,
                     temp_dir: str | None = None, include_dashboard: bool | None = None):
    """Start a one-node Ray cluster in this process, as `ray.init(address="local")` does, but with
    every port free; returns Ray's `Node` (its `address` is what `ray.init` joins).

    `ray.init` starts the dashboard agent's HTTP server on Ray's fixed 52365 and has no option to
    change it (Ray's answer: set cluster ports with `ray start`, ray-project/ray#34886). A second
    cluster on the machine whose agent finds 52365 taken still starts, and `ray job submit` to it
    then fails with "No available agent" (docs/CLUSTER.md, "Ports"). So wmtp's own local clusters
    (and the tests') start the head themselves with the agent's HTTP port 0 (the agent binds a free
    one and registers it); the other ports of a `ray.init` cluster are free ones already (GCS,
    node and object managers, agent gRPC, runtime-env agent), the dashboard takes 8265 or the next
    free port. The caller ends it with `kill_all_processes()` after `ray.shutdown()`; its processes
    also die with this one (Ray's fate sharing), as a `ray.init` cluster's do.
    """
    from ray._private.authentication.authentication_token_setup import (
        enable_token_auth_by_default,
        ensure_token_if_auth_enabled,
    )
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    # What ray.init(address="local") does before it starts a head (Ray 2.60, ray._private.worker.init).
    enable_token_auth_by_default()
    ensure_token_if_auth_enabled({}, create_token_if_missing=True)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # ray.init's usage_lib.set_usage_stats_enabled_via_env_var(False)
    params = RayParams(num_cpus=num_cpus, include_dashboard=include_dashboard, dashboard_port=None,
                       dashboard_agent_listen_port=0, metrics_export_port=metrics_export_port, temp_dir=temp_dir,
                       _system_config={})
    return Node(ray_params=params, head=True, shutdown_at_exit=False, spawn_reaper=True, ray_init_cluster=True)


def _end_local_head(head) -> None:
    """At exit: disconnect, then end the head. Ray's own exit hook (registered when ray is imported,
    so it runs after this one) would disconnect from a cluster already gone, and the driver's core
    worker exits 1 when its GCS dies under it."""
    ray.shutdown()
    head.kill_all_processes(check_alive=False, allow_graceful=True)


def metrics_port() -> int:
    """WMTP_METRICS_PORT, else 8080 when free, else any free port (printed when the cluster starts)."""
    wanted = int(os.environ.get("WMTP_METRICS_PORT", DEFAULT_METRICS_PORT))
    for port in (wanted, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free TCP port on 127.0.0.1")


def cpus_needed(cfg: WMTPConfig) -> float:
    """Logical CPUs a run reserves (wmtp.orchestration.resources.run_resources)."""
    return run_resources(cfg).cpus


def remove_orphaned_placement_groups() -> list[str]:
    """Remove this job's placement groups whose creating actor has died; returns their ids (hex).

    A placement group that an actor creates lives as long as the JOB, not the actor. Under Tune,
    Ray Train V2's controller (an actor of the trial) creates its worker group's group; when Tune
    stops the trial (ASHA), the trial's actors die and the group can stay reserved, with no
    worker in it, until the sweep ends (Ray issue 54305; Ray Train's own detached cleaner misses
    some stops). On a cluster sized for the sweep, the next trials then wait for ever. The Tune
    driver calls this as trials end (`wmtp.orchestration.tune`). Groups made by a driver (no
    creating actor), by a live actor, detached ones and other jobs' are never touched.
    """
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    table = gcs_pb2.PlacementGroupTableData
    job = ray.get_runtime_context().get_job_id()
    nil_actor = ray.ActorID.nil().binary()
    removed = []
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        group = table.FromString(raw)
        if (group.state == table.REMOVED or group.is_detached or not group.creator_actor_dead
                or group.creator_actor_id in (b"", nil_actor) or group.creator_job_id.hex() != job):
            continue
        try:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(group.placement_group_id)))
        except Exception as exc:  # already removed by Ray Train's cleaner meanwhile
            logging.getLogger(__name__).debug("placement group %s: %s", group.placement_group_id.hex(), exc)
            continue
        removed.append(group.placement_group_id.hex())
    return removed
