"""A real `ray start --head` cluster for job-submission tests, ended by process group (never `ray stop`).

`ray start` daemonises gcs_server, raylet, dashboard, ... in its own process group when started
with `start_new_session=True`: `stop()` signals that group, then any process still naming this
head's private `--temp-dir` (workers, job drivers), so other Ray clusters on the machine are
untouched. Every port is a free one on 127.0.0.1; token auth uses a private token file
(`RAY_AUTH_TOKEN_PATH`) instead of the user's `~/.ray/auth_token`.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.fixtures.services import free_port

VENV_BIN = Path(sys.executable).parent


@dataclass
class RayHead:
    num_cpus: int
    wmtp_home: Path
    temp_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="rh", dir="/tmp"))
    dashboard_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    gcs_port: int = field(default_factory=free_port)
    pgid: int | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def token_path(self) -> Path:
        return Path(self.temp_dir + "-token")

    def env(self) -> dict[str, str]:
        """The environment of the head and of the CLI calls: token auth, the venv's ray/wmtp first."""
        env = dict(os.environ)
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path), RAY_USAGE_STATS_ENABLED="0",
                   PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", WMTP_HOME=str(self.wmtp_home))
        env.pop("RAY_ADDRESS", None)
        return env

    def start(self, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        if not self.token_path.exists():
            self.token_path.write_text(secrets.token_hex(32))
        self.wmtp_home.mkdir(parents=True, exist_ok=True)
        ports = [f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}",
                 f"--metrics-export-port={self.metrics_port}", f"--ray-client-server-port={free_port()}",
                 f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", f"--node-manager-port={free_port()}",
                 f"--object-manager-port={free_port()}"]
        cmd = ["ray", "start", "--head", f"--num-cpus={self.num_cpus}", "--num-gpus=0", "--dashboard-host=127.0.0.1",
               "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}", "--disable-usage-stats", *ports, *extra]
        for attempt in (1, 2):  # a busy machine can miss Ray's node start-up deadline once
            proc = subprocess.Popen(cmd, env=self.env(), start_new_session=True, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, cwd=self.wmtp_home)
            self.pgid = proc.pid
            out, _ = proc.communicate(timeout=180)
            if proc.returncode == 0:
                return subprocess.CompletedProcess(cmd, 0, out, "")
            self.stop()
            if attempt == 2 or "timed out during startup" not in out:
                raise RuntimeError(f"ray start failed ({proc.returncode}):\n{out[-4000:]}")
        raise AssertionError("unreachable")

    def cli(self, *args: str, cwd: str | Path | None = None, timeout: float = 900,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run a command (`ray job ...`, `wmtp ...`) as a user of this cluster would."""
        proc = subprocess.run(list(args), env=self.env(), cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
        return proc

    def job_status(self, job_id: str) -> str:
        """The job's status as `ray job list` shows it: PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED."""
        out = self.cli("ray", "job", "list", "--address", self.address).stdout
        found = re.search(rf"submission_id='{re.escape(job_id)}'.*?status=<JobStatus\.(\w+)", out)
        return found.group(1) if found else "UNKNOWN"

    def stop(self) -> None:
        """End this head's processes only: its process group, then stragglers naming its temp dir."""
        if self.pgid is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.pgid, sig)
                except ProcessLookupError:
                    break
                time.sleep(3)
        for _ in range(2):
            for pid in self._pids_of_temp_dir():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(1)
        self.pgid = None

    def _pids_of_temp_dir(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:  # the command line (Ray's daemons) or the environment (workers, job drivers)
                text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            except OSError:
                continue
            if self.temp_dir.encode() in text:
                pids.append(int(entry.name))
        return pids

    def remove(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.token_path.unlink(missing_ok=True)
