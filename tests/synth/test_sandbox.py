"""Sandbox containment, one case per hazard, each with its expected status and reported event, checked
against the host afterwards (files not written, no process left)."""
from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from builders import sandbox
from builders.sandbox import Limits

FAST = Limits(wall_s=3, cpu_s=1, memory_mb=256, nproc=12)


@pytest.fixture(scope="module", autouse=True)
def _available():
    try:
        sandbox.run_python("pass", limits=FAST)
    except Exception as e:  # noqa: BLE001 - a machine without unshare/setpriv
        pytest.skip(f"sandbox unavailable: {e}")


def test_ok_and_failure_and_local_files():
    r = sandbox.run_python("print(open('data.txt').read().upper()); open('out.txt', 'w').write('x')",
                           files={"data.txt": "abc"}, limits=FAST)
    assert r.status == "ok" and r.stdout.strip() == "ABC" and r.events == []
    r = sandbox.run_python("assert 1 + 1 == 3", limits=FAST)
    assert r.status == "failed" and r.returncode == 1 and "AssertionError" in r.stderr


def test_infinite_loop_hits_cpu_limit():
    # wall limit far above the CPU limit: the CPU rlimit must be what stops it (even on a busy machine)
    r = sandbox.run_python("while True:\n    pass", limits=Limits(wall_s=15, cpu_s=1))
    assert r.status == "cpu_limit" and r.events == ["cpu_limit"]
    assert r.wall_s > 0.9


def test_sleeping_forever_hits_wall_limit():
    r = sandbox.run_python("import time\ntime.sleep(60)", limits=Limits(wall_s=1, cpu_s=1))
    assert r.status == "timeout" and "timeout" in r.events and r.wall_s < 3


def test_memory_blow_up_is_refused():
    r = sandbox.run_python("x = bytearray(1_000_000_000)", limits=FAST)
    assert r.status == "memory_limit" and "memory_limit" in r.events


def test_fork_bomb_is_capped_and_fully_killed():
    seen: list[dict[int, int]] = []
    stop = threading.Event()

    def watch():
        # count processes per sandbox uid while the bomb runs (other test workers may run sandboxes too)
        while not stop.is_set():
            n: dict[int, int] = {}
            for d in Path("/proc").iterdir():
                if d.name.isdigit():
                    try:
                        uid = int((d / "status").read_text().split("Uid:")[1].split()[0])
                    except (OSError, IndexError, ValueError):
                        continue
                    if uid >= 200_000:
                        n[uid] = n.get(uid, 0) + 1
            seen.append(n)
            time.sleep(0.05)

    t = threading.Thread(target=watch)
    t.start()
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = sandbox.run_python(bomb, limits=Limits(wall_s=2, cpu_s=1, nproc=12))
    stop.set()
    t.join()
    assert r.status in ("timeout", "cpu_limit") and "fork_limit" in r.events
    if r.uid is not None:
        assert max(n.get(r.uid, 0) for n in seen) <= 12 + 1   # the cap (+1: a process counted while it exits)
        assert sandbox.wait_for_no_processes(r.uid) == 0


def test_shell_fork_bomb_is_contained():
    r = sandbox.run(["bash", "-c", ":(){ :|:& };:; sleep 0.5; echo survived"], limits=Limits(wall_s=3, nproc=12))
    assert "fork_limit" in r.events and r.wall_s < 5
    if r.uid is not None:
        assert sandbox.wait_for_no_processes(r.uid) == 0


@pytest.mark.parametrize("target", ["/tmp", "/dev/shm", "/var/tmp"])
def test_writes_outside_the_dir_are_refused_and_reported(target):
    victim = Path(target) / f"prefdata-escape-{uuid.uuid4().hex}"
    r = sandbox.run_python(f"open({str(victim)!r}, 'w').write('x')", limits=FAST)
    assert not victim.exists()
    assert r.status == "failed" and "write_denied" in r.events
    assert any(a.startswith("write_attempt") and str(victim) in a for a in r.attempts)


def test_network_is_unreachable_and_reported():
    code = "import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('93.184.216.34', 80))\n"
    r = sandbox.run_python(code, limits=FAST)
    assert r.status == "failed" and "network_denied" in r.events
    assert "network_attempt ('93.184.216.34', 80)" in r.attempts


def test_runaway_output_is_capped():
    r = sandbox.run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", limits=Limits(
        wall_s=5, fsize_mb=1))
    assert r.status == "output_limit" and len(r.stdout) <= Limits().output_chars


def test_timing_harness_round_trip():
    r = sandbox.run_python(sandbox.timing_harness("def f(n):\n    return sum(range(n))", "f(1000)", 4),
                           limits=FAST)
    ts = sandbox.parse_timings(r.stdout)
    assert r.ok and ts is not None and len(ts) == 4 and all(0 <= t < 1 for t in ts)
