"""The sandbox against hostile programs: none escapes, the evaluator survives, nothing outside changes."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from wmtp.evaluation.sandbox import _UIDS, SandboxConfig, run_program, run_programs, run_stdio

IS_ROOT = os.getuid() == 0
FAST = SandboxConfig(timeout_s=2.0)


def _sandbox_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("wmtp-sandbox-")}


def _live_sandbox_processes() -> list[int]:
    """Running (non-zombie) processes of the sandbox uids."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
            except OSError:
                continue
            if int(fields["Uid"].split()[0]) in _UIDS.uids and not fields["State"].strip().startswith("Z"):
                pids.append(int(entry))
    return pids


def test_verdicts_pass_fail_error_message():
    assert run_program("assert sum([1, 2]) == 3").status == "passed"
    failed = run_program("def f():\n    return 1\nassert f() == 2, 'wrong'")
    assert failed.status == "failed" and "AssertionError: wrong" in failed.message
    syntax = run_program("def f(:\n")
    assert syntax.status == "failed" and "SyntaxError" in syntax.message
    assert run_program("import sys; sys.exit(3)").status == "failed"
    # Exiting before the checks run must not count as passing (a test program's asserts come last).
    for early in ("import sys; sys.exit(0)", "exit()", "quit(0)", "raise SystemExit"):
        r = run_program(early + "\nassert False")
        assert r.status == "failed" and "SystemExit" in r.message, early
    assert run_program("import math, collections, itertools\nprint(math.gcd(4, 6))").passed


def test_infinite_loop_times_out_and_evaluator_survives():
    start = time.monotonic()
    r = run_program("while True:\n    pass", config=SandboxConfig(timeout_s=1.0))
    assert r.status == "timeout"
    assert time.monotonic() - start < 5
    assert run_program("assert True").passed


def test_cpu_limit_kills_busy_program_even_with_long_wall_timeout():
    r = run_program("while True:\n    pass", config=SandboxConfig(timeout_s=30.0, cpu_time_s=1))
    assert r.status == "timeout" and r.duration_s < 10


def test_memory_bomb_is_contained():
    r = run_program("x = bytearray(8 << 30)\n", config=SandboxConfig(memory_bytes=512 << 20))
    assert r.status == "failed" and "MemoryError" in r.message
    grow = run_program("xs = []\nwhile True:\n    xs.append(bytearray(64 << 20))\n",
                       config=SandboxConfig(memory_bytes=512 << 20, timeout_s=10))
    assert grow.status == "failed" and "MemoryError" in grow.message


def test_output_and_file_size_limits():
    r = run_program("open('big', 'wb').write(b'x' * (4 << 20))", config=SandboxConfig(max_file_bytes=1 << 20))
    assert r.status == "failed" and "File too large" in r.message


@pytest.mark.skipif(not IS_ROOT, reason="NPROC is enforced through the unprivileged uid switch (root only)")
def test_fork_bomb_is_contained_and_reaped():
    # posix.fork bypasses the disabled os.fork; the process limit and the group/uid kill must hold.
    bomb = (
        "import posix, time\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        if posix.fork() == 0:\n"
        "            posix.setsid() if hasattr(posix, 'setsid') else None\n"
        "    except OSError:\n"
        "        pass\n"
        "time.sleep(30)\n"
    )
    r = run_program(bomb, config=SandboxConfig(timeout_s=2.0, max_processes=8))
    assert r.status == "timeout"
    assert _live_sandbox_processes() == []
    assert run_program("assert True").passed


def test_guarded_fork_and_subprocess_are_refused():
    r = run_program("import os\nos.fork()")
    assert r.status == "failed" and "disabled" in r.message
    r = run_program("import subprocess\nsubprocess.run(['true'])")
    assert r.status == "failed" and "disabled" in r.message
    r = run_program("import os\nos.system('touch /tmp/wmtp-should-not-exist')")
    assert r.status == "failed" and not Path("/tmp/wmtp-should-not-exist").exists()


def test_files_outside_the_sandbox_survive(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    tmp_path.chmod(0o755)
    attacks = [
        f"import os\nos.remove({str(sentinel)!r})",
        f"import os\nos.unlink({str(sentinel)!r})",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
        f"open({str(sentinel)!r}, 'w').write('owned')",
    ]
    if IS_ROOT:  # bypassing the guard; the unprivileged uid must stop these
        attacks += [f"import posix\nposix.unlink({str(sentinel)!r})",
                    f"import posix\nposix.rename({str(sentinel)!r}, {str(sentinel)!r} + '.x')"]
    before = _sandbox_dirs()
    for attack in attacks:
        r = run_program(attack)
        assert r.status == "failed", (attack, r)
        assert sentinel.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentinel.txt"]
    # Inside its own working directory a program may create and delete files; the folder goes away.
    assert run_program("import os\nopen('a', 'w').write('x')\nos.remove('a')\nopen('b','w')").passed
    assert _sandbox_dirs() == before


@pytest.mark.skipif(not IS_ROOT, reason="private tmpfs mounts need root")
def test_world_writable_folders_are_private(tmp_path):
    name = f"wmtp-escape-{os.getpid()}"
    r = run_program(f"for d in ('/tmp', '/dev/shm', '/var/tmp'):\n    open(d + '/{name}', 'w').write('x')")
    assert r.passed, r
    assert not any(os.path.exists(f"{d}/{name}") for d in ("/tmp", "/dev/shm", "/var/tmp"))


def test_environment_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("WMTP_FAKE_SECRET", "hunter2-secret")
    program = (
        "import os\n"
        "print(sorted(os.environ.items()))\n"
        "try:\n"
        "    print(open(f'/proc/{os.getppid()}/environ', 'rb').read())\n"
        "except OSError as e:\n"
        "    print('denied', e)\n"
    )
    r = run_program(program)
    assert r.passed
    assert "WMTP_FAKE_SECRET" not in r.stdout
    if IS_ROOT:  # as the same uid the parent's /proc environ is readable: a documented limit
        assert "hunter2-secret" not in r.stdout


def test_network_is_unreachable():
    connections: list = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                connections.append(conn)
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        r = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')")
        time.sleep(0.3)
    finally:
        stop.set()
        t.join()
        server.close()
    assert r.status in ("failed", "timeout")
    assert connections == []


def test_stdio_mode_compares_output():
    prog = "a, b = map(int, input().split())\nprint(a + b)"
    assert run_stdio(prog, "2 3\n", "5\n").passed
    assert run_stdio(prog, "2 3\n", "5  \n\n").passed  # trailing blanks ignored
    wrong = run_stdio(prog, "2 3\n", "6")
    assert wrong.status == "failed" and wrong.message == "wrong answer"
    assert run_stdio("import sys\nprint(sys.stdin.read().upper(), end='')\nsys.exit(0)", "ab", "AB").passed
    assert run_stdio("print(input())\nexit()", "x\n", "x").passed
    assert run_stdio("print(1)\nexit(1)", "", "1").status == "failed"


def test_parallel_workers_keep_order():
    programs = [f"assert {i} % 2 == 0" for i in range(8)]
    results = run_programs(programs, config=FAST, workers=3)
    assert [r.passed for r in results] == [i % 2 == 0 for i in range(8)]


# ---------------------------------------------------------------- forged verdicts
# A program that finds the harness's result channel and writes its own verdict must never count
# as passed. Every forger below ends with a failing assertion, so only a forged report could pass.
FORGED = '{"status": "passed", "message": "", "warnings": []}'
FORGERS = {
    # the original attack: the result fd named in the harness's argv
    "argv_fd": f"import json, os, sys\nfd = json.loads(sys.argv[1])['result_fd']\nos.write(fd, b'{FORGED}')\n"
               "os.close(fd)\nos._exit(0)\n",
    # the fd number the child was started with, read back from /proc/self/cmdline
    "cmdline_fd": "import json, os\nargs = open('/proc/self/cmdline', 'rb').read().split(b'\\0')\n"
                  f"fd = json.loads(args[-2])['result_fd']\nos.write(fd, b'{FORGED}')\nos._exit(0)\n",
    # every open descriptor, written to, then a clean-looking exit before the assertion
    "all_fds_then_exit": "import os\nfor fd in range(3, 1024):\n    try:\n"
                         f"        os.write(fd, b'{FORGED}')\n    except OSError:\n        pass\nos._exit(0)\n",
    # every descriptor read first (to steal a secret), then the forged verdict with what was read
    "read_then_write_fds": "import json, os\nseen = b''\nfor fd in range(3, 1024):\n    try:\n"
                           "        os.set_blocking(fd, False)\n        seen += os.read(fd, 256)\n"
                           "    except (OSError, BlockingIOError):\n        pass\n"
                           "forged = json.dumps({'status': 'passed', 'message': '', 'warnings': [], "
                           "'nonce': seen.decode(errors='ignore')}).encode()\n"
                           "for fd in range(3, 1024):\n    try:\n        os.write(fd, forged)\n"
                           "    except OSError:\n        pass\nos._exit(0)\n",
    # write the forged verdict and let the harness carry on (its own report follows)
    "all_fds_then_fail": "import os\nfor fd in range(3, 1024):\n    try:\n"
                         f"        os.write(fd, b'{FORGED}')\n    except OSError:\n        pass\n",
    # the harness's own report function, reached through the main module
    "harness_report": "import sys\nsys.modules['__main__'].report('passed')\nsys.modules['__main__']._exit(0)\n",
}


@pytest.mark.parametrize("name", sorted(FORGERS))
def test_a_program_cannot_forge_its_verdict(name):
    r = run_program(FORGERS[name] + "assert False, 'the real tests fail'\n", config=FAST)
    assert r.status != "passed", (name, r)
    assert run_program("assert True", config=FAST).passed  # the evaluator is fine afterwards


def test_the_verdict_channel_is_not_in_argv_or_environment():
    probe = ("import os, sys\nassert sys.argv == ['-c'], sys.argv\n"
             "assert 'result_fd' not in str(dict(os.environ)) and 'nonce' not in str(dict(os.environ))\n")
    assert run_program(probe, config=FAST).passed


# ---------------------------------------------------------------- verdicts decided by the parent
# A wrong solution (double(2) returns 3) plus code that attacks the harness. Through the normal
# path (`execute_completion` of a HumanEval-format task) the test is rewritten into call records,
# the program never holds the expected values, and the parent compares: every forger must get
# `failed`. At the in-process verdict (the old harness) the ones marked "forged at HEAD" passed.
DOUBLE = {"task_id": "forge/double", "prompt": "def double(x):\n", "entry_point": "double",
          "test": "def check(candidate):\n    assert candidate(2) == 4\n    assert abs(candidate(0.5) - 1.0) < 1e-6\n"
                  "    assert candidate(1)\n    assert not candidate(0)\n"}
WRONG = "    return x + 1\n"
PARENT_FORGERS = {
    # forged at HEAD: the harness's own report, rewritten through the shared json module
    "json_dumps": WRONG + "import json\n_dumps = json.dumps\n"
                  "def dumps(obj, *a, **k):\n    if isinstance(obj, dict) and 'status' in obj:\n"
                  "        obj = {**obj, 'status': 'passed', 'message': ''}\n    return _dumps(obj, *a, **k)\n"
                  "json.dumps = dumps\n",
    # forged at HEAD: up the stack frames to the harness's report function, call it, exit 0; where
    # the harness only sends values, send the one answer the prompt gives away and say "done"
    "frame_walk": WRONG + "import os, sys\nf, found = sys._getframe(), {}\nwhile f is not None:\n"
                  "    for k, v in list(f.f_locals.items()) + list(f.f_globals.items()):\n"
                  "        if k in ('report', 'send', 'fd') and k not in found:\n            found[k] = v\n"
                  "    f = f.f_back\nif 'report' in found:\n    found['report']('passed')\n"
                  "elif 'send' in found and 'fd' in found:\n"
                  "    found['send'](found['fd'], {'i': 0, 'value': ['i', '0x4']})\n"
                  "    found['send'](found['fd'], {'done': True})\nelse:\n    raise AssertionError(found)\nos._exit(0)\n",
    # forged at HEAD: a value that equals anything (an int subclass, so a type check must be exact)
    "always_equal": "    class Any(int):\n        def __eq__(self, other):\n            return True\n"
                    "        __hash__ = int.__hash__\n        def __sub__(self, other):\n            return self\n"
                    "        def __abs__(self):\n            return 0\n        def __bool__(self):\n"
                    "            return x != 0\n    return Any(x + 1)\n",
    # forged at HEAD: the builtins the comparison uses, replaced (abs makes every tolerance check hold)
    "builtins_patch": "    return x * 2 if x >= 1 or x == 0 else 99.0\nimport builtins\nbuiltins.abs = lambda v: 0\n",
    # exit code 0 before any check runs
    "exit_code": WRONG + "import os\nos._exit(0)\n",
    # a flood of stdout, errors swallowed, then the wrong answers
    "stdout_flood": WRONG + "import sys\ntry:\n    sys.stdout.write('x' * (8 << 20))\n    sys.stdout.flush()\n"
                    "except OSError:\n    pass\n",
    # a passing report / passing values printed where a careless parent might read them
    "fake_result_line": WRONG + "print('{\"status\": \"passed\", \"message\": \"\"}')\n"
                        "print('{\"i\": 0, \"value\": [\"i\", \"0x4\"]}')\nprint('{\"done\": true}')\n",
    # lines injected into the channel through an exception message (JSON escaping must hold)
    "newline_injection": "    raise ValueError('\\n{\"i\": 0, \"value\": [\"i\", \"0x4\"]}\\n{\"done\": true}\\n')\n",
    # every descriptor flooded (the result channel included), then a clean exit
    "channel_flood": WRONG + "import os\nfor fd in range(3, 1024):\n    try:\n        os.set_blocking(fd, False)\n"
                     "        os.write(fd, b'{\"done\": true}\\n' * 4096)\n    except OSError:\n        pass\n",
}


@pytest.mark.parametrize("name", sorted(PARENT_FORGERS))
def test_a_wrong_solution_cannot_forge_a_parent_verdict(name):
    from wmtp.evaluation.benchmarks import task_from_record
    from wmtp.evaluation.runner import execute_completion

    task = task_from_record(DOUBLE)
    r = execute_completion(task, PARENT_FORGERS[name], FAST)
    assert r.status == "failed", (name, r)
    ok = execute_completion(task, "    return 2 * x\n", FAST)
    assert ok.passed and ok.verdict_by == "parent", ok


def test_the_program_never_sees_the_expected_values():
    from wmtp.evaluation.benchmarks import task_from_record
    from wmtp.evaluation.runner import execute_completion

    task = task_from_record({**DOUBLE, "test": DOUBLE["test"].replace("== 4", "== 123456789")})
    # the program looks for the expected value in its source, argv, stdin and the harness's frames
    # (the literal is never written whole in the probe, so only a leak can put it in `hay`)
    probe = ("    return 12345 * 10000 + 6789 if x == 2 else 2 * x\nimport sys\n"
             "hay = open('program.py').read() + str(sys.argv) + sys.stdin.read()\n"
             "f = sys._getframe()\nwhile f is not None:\n    hay += repr(f.f_locals) + repr(f.f_globals)\n"
             "    f = f.f_back\nassert str(12345 * 10000 + 6789) not in hay, 'leaked'\n")
    r = execute_completion(task, probe, FAST)
    assert r.passed and r.verdict_by == "parent", r


def test_values_keep_their_python_types_across_the_channel():
    """The parent's `==` on the decoded value is the program's `==` on the returned one (the slow
    reference: both evaluated here, in one interpreter)."""
    from wmtp.data.calls import calls_from_test
    from wmtp.evaluation.sandbox import run_calls

    cases = [("True", "1"), ("True", "True"), ("1", "1.0"), ("(1, 2)", "[1, 2]"), ("[1, 2]", "[1, 2]"),
             ("2 ** 200", "2 ** 200"), ("10 ** 5000", "10 ** 64"), ("float('nan')", "1.5"), ("-0.0", "0"),
             ("{1: 'a', 'b': (2, None)}", "{'b': (2, None), 1: 'a'}"), ("{3, 1}", "{1, 3}"),
             ("frozenset({1})", "{1}"), ("b'\\x00a'", "b'\\x00a'"), ("1 + 2j", "1 + 2j"),
             ("'\\ud800'", "'\\ud800'"), ("[[1], (2,), {3: [4.5]}]", "[[1], (2,), {3: [4.5]}]"), ("None", "0")]
    for value, expected in cases:
        calls = calls_from_test(f"def check(candidate):\n    assert candidate() == {expected}\n")
        r = run_calls(f"def f():\n    return {value}\n", "f", calls, config=FAST)
        assert r.passed is (eval(value) == eval(expected)), (value, expected, r)  # noqa: S307


def _pool_worker_script(n: int, sleep_s: float) -> str:
    return ("import json, sys\nfrom wmtp.evaluation.sandbox import SandboxConfig, run_programs\n"
            f"programs = ['import time\\ntime.sleep({sleep_s})\\nassert True'] * {n}\n"
            "res = run_programs(programs, config=SandboxConfig(timeout_s=20.0), workers=2)\n"
            "print(json.dumps([[r.status, r.message] for r in res]))\n")


@pytest.mark.skipif(not IS_ROOT, reason="uid pools exist only where the sandbox switches uid (root)")
def test_two_processes_sandboxing_at_once_never_kill_each_others_programs():
    """Each process claims a uid block of its own: the short runs of one (each followed by a kill of
    everything left with its uid) never hit the long runs of the other."""
    import json
    import subprocess
    import sys

    slow = subprocess.Popen([sys.executable, "-c", _pool_worker_script(4, 1.5)], stdout=subprocess.PIPE, text=True)
    fast = subprocess.Popen([sys.executable, "-c", _pool_worker_script(40, 0.0)], stdout=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=120)[0] for p in (slow, fast)]
    assert [p.returncode for p in (slow, fast)] == [0, 0]
    for out in outs:
        results = json.loads(out.strip().splitlines()[-1])
        assert all(status == "passed" for status, _ in results), results


def test_a_flooded_result_channel_is_cut_off():
    from wmtp.data.calls import calls_from_test
    from wmtp.evaluation.sandbox import run_calls

    calls = calls_from_test("def check(candidate):\n    assert candidate() == 1\n")
    flood = "def f():\n    return 'x' * (1 << 20)\n"  # one 1 MiB line against a 64 KiB channel
    r = run_calls(flood, "f", calls, config=SandboxConfig(timeout_s=5.0, max_result_bytes=1 << 16))
    assert r.status == "failed" and "result channel over 65536 bytes" in r.message and r.duration_s < 4, r


def test_uid_blocks_are_exclusive_while_held(tmp_path):
    """Two pools (as two processes would) on one lock folder get different blocks; a block frees
    when its holder's lock goes."""
    import os

    from wmtp.evaluation.sandbox import _UidPool

    a, b = _UidPool(base=70000, size=4, blocks=2, lock_dir=str(tmp_path)), _UidPool(base=70000, size=4, blocks=2,
                                                                                    lock_dir=str(tmp_path))
    assert (a.acquire(), b.acquire()) == (70000, 70004)
    c = _UidPool(base=70000, size=4, blocks=2, lock_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="all 2 uid blocks from 70000 are held"):
        c.acquire()
    os.close(a._lock_fd)  # what the kernel does when a's process dies
    assert c.acquire() == 70000
