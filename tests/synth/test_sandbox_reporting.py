"""Every hidden attempt the sandbox contains is also reported: one case per audited path, each with its
error swallowed by the code (status stays `ok`), each checked for its exact attempt line, its event, and
against the host afterwards (nothing created, changed or removed)."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from builders import sandbox
from builders.sandbox import Limits

FAST = Limits(wall_s=5, cpu_s=2, memory_mb=256, nproc=12)
SWALLOW = "import os, shutil, socket, subprocess\ndef quiet(f):\n    try:\n        f()\n    except Exception:\n        pass\n"


@pytest.fixture(scope="module", autouse=True)
def _available():
    try:
        sandbox.run_python("pass", limits=FAST)
    except Exception as e:  # noqa: BLE001 - a machine without unshare/setpriv
        pytest.skip(f"sandbox unavailable: {e}")


@pytest.fixture
def host():
    """A victim path that must stay absent, and a host file and dir that must stay as they are."""
    tag = uuid.uuid4().hex
    victim, hfile, hdir = (Path("/tmp") / f"prefdata-escape-{tag}-{k}" for k in ("v", "f", "d"))
    hfile.write_text("host")
    os.chmod(hfile, 0o644)
    os.utime(hfile, (1_000_000, 1_000_000))
    hdir.mkdir()
    (hdir / "keep").write_text("k")
    yield victim, hfile, hdir
    for p in (victim, hfile):
        if p.is_symlink() or p.is_file():
            p.unlink()
    for p in (victim, hdir):
        if p.is_dir():
            shutil.rmtree(p)


# (code, audit event, which host path the attempt names: v = victim, f = host file, d = host dir)
WRITES = {
    "os.open": ("quiet(lambda: os.close(os.open(V, os.O_CREAT | os.O_WRONLY)))", "os.open", "v"),
    "os.open_rdwr_existing": ("quiet(lambda: os.close(os.open(F, os.O_RDWR)))", "os.open", "f"),
    "open_append": ("quiet(lambda: open(V, 'a'))", "open", "v"),
    "open_r_plus": ("quiet(lambda: open(F, 'r+'))", "open", "f"),
    "os.mkdir": ("quiet(lambda: os.mkdir(V))", "os.mkdir", "v"),
    "os.makedirs": ("quiet(lambda: os.makedirs(V + '/a/b'))", "os.mkdir", "v"),
    "os.rename": ("open('in.txt', 'w').close()\nquiet(lambda: os.rename('in.txt', V))", "os.rename", "v"),
    "os.rename_in": ("quiet(lambda: os.rename(F, 'stolen.txt'))", "os.rename", "f"),
    "os.replace": ("open('in.txt', 'w').close()\nquiet(lambda: os.replace('in.txt', V))", "os.rename", "v"),
    "os.remove": ("quiet(lambda: os.remove(F))", "os.remove", "f"),
    "os.unlink": ("quiet(lambda: os.unlink(F))", "os.remove", "f"),
    "os.rmdir": ("quiet(lambda: os.rmdir(D))", "os.rmdir", "d"),
    "os.link": ("open('in.txt', 'w').close()\nquiet(lambda: os.link('in.txt', V))", "os.link", "v"),
    "os.symlink": ("quiet(lambda: os.symlink('/etc/passwd', V))", "os.symlink", "v"),
    "os.truncate": ("quiet(lambda: os.truncate(F, 0))", "os.truncate", "f"),
    "os.chmod": ("quiet(lambda: os.chmod(F, 0o777))", "os.chmod", "f"),
    "os.utime": ("quiet(lambda: os.utime(F, (0, 0)))", "os.utime", "f"),
    "shutil.copyfile": ("open('in.txt', 'w').close()\nquiet(lambda: shutil.copyfile('in.txt', V))",
                        "shutil.copyfile", "v"),
    "shutil.copy": ("open('in.txt', 'w').close()\nquiet(lambda: shutil.copy('in.txt', V))", "shutil.copyfile",
                    "v"),
    "shutil.copy2": ("open('in.txt', 'w').close()\nquiet(lambda: shutil.copy2('in.txt', V))", "shutil.copyfile",
                     "v"),
    "shutil.copytree": ("os.mkdir('t')\nquiet(lambda: shutil.copytree('t', V))", "shutil.copytree", "v"),
    "shutil.move": ("open('in.txt', 'w').close()\nquiet(lambda: shutil.move('in.txt', V))", "shutil.move", "v"),
    "shutil.rmtree": ("quiet(lambda: shutil.rmtree(D))", "shutil.rmtree", "d"),
    "relative_escape": ("quiet(lambda: os.open('../' * 40 + V[1:], os.O_CREAT | os.O_WRONLY))", "os.open", "v"),
    # the mkdir event carries dir_fd (os.open's "open" event does not: see builders/sandbox.py)
    "dir_fd": ("d = os.open(os.path.dirname(V), os.O_RDONLY)\n"
               "quiet(lambda: os.mkdir(os.path.basename(V), dir_fd=d))", "os.mkdir", "v"),
}


def _assert_host_untouched(victim: Path, hfile: Path, hdir: Path) -> None:
    assert not victim.exists() and not victim.is_symlink()
    st = hfile.stat()
    assert hfile.read_text() == "host" and st.st_mode & 0o777 == 0o644 and st.st_mtime == 1_000_000
    assert (hdir / "keep").read_text() == "k"


@pytest.mark.parametrize("case", sorted(WRITES))
def test_every_write_path_outside_the_dir_is_reported(case, host):
    victim, hfile, hdir = host
    code, event, which = WRITES[case]
    named = {"v": victim, "f": hfile, "d": hdir}[which]
    r = sandbox.run_python(f"V, F, D = {str(victim)!r}, {str(hfile)!r}, {str(hdir)!r}\n{SWALLOW}{code}\n",
                           limits=FAST)
    assert r.status == "ok", r.stderr           # the code hid its error: only the report tells
    assert f"write_attempt {event} {named}" in r.attempts, r.attempts
    assert "write_denied" in r.events
    _assert_host_untouched(victim, hfile, hdir)


def test_a_symlink_out_of_the_dir_is_followed_when_judging_a_write(host):
    victim, hfile, hdir = host
    code = (f"{SWALLOW}os.symlink({str(victim.parent)!r}, 'out')\n"
            f"quiet(lambda: open('out/{victim.name}', 'w'))\n")
    r = sandbox.run_python(code, limits=FAST)
    assert r.status == "ok" and "write_denied" in r.events
    assert len(r.attempts) == 1 and r.attempts[0].startswith("write_attempt open /")
    assert r.attempts[0].endswith(f"/out/{victim.name}")      # named as the code wrote it
    _assert_host_untouched(victim, hfile, hdir)


def test_the_same_operations_inside_the_dir_are_not_reported():
    code = ("import os, shutil, subprocess\n"
            "os.close(os.open('a', os.O_CREAT | os.O_WRONLY)); open('b', 'a').close(); os.mkdir('d')\n"
            "os.makedirs('d/e/f'); os.rename('a', 'd/a'); os.replace('b', 'd/b'); shutil.copy2('d/a', 'c')\n"
            "shutil.copytree('d', 'd2'); shutil.move('c', 'd2/c'); os.link('d/a', 'l'); os.symlink('l', 's')\n"
            "os.truncate('l', 0); os.chmod('l', 0o600); os.utime('l', (0, 0)); os.remove('l'); os.unlink('s')\n"
            "shutil.rmtree('d2'); os.rmdir('d/e/f'); open(os.devnull, 'w').write('x')\n"
            "os.close(os.open(os.devnull, os.O_RDWR)); print(sorted(os.listdir('.')))\n")
    r = sandbox.run_python(code, limits=FAST)
    assert r.status == "ok" and r.events == [] and r.attempts == [], (r.events, r.attempts, r.stderr)
    assert r.stdout.strip() == "['__main__.py', 'd']"


def test_bind_is_reported():
    r = sandbox.run_python(f"{SWALLOW}s = socket.socket()\nquiet(lambda: s.bind(('0.0.0.0', 0)))\n", limits=FAST)
    assert r.status == "ok" and r.events == ["network_bind"]
    assert r.attempts == ["bind_attempt socket.bind ('0.0.0.0', 0)"]


def test_listen_is_reported_bound_or_not():
    code = (f"{SWALLOW}s = socket.socket()\nquiet(s.listen)\n"
            "t = socket.socket()\nt.bind(('127.0.0.1', 0))\nport = t.getsockname()[1]\nquiet(lambda: t.listen(3))\n"
            "print(port)\n")
    r = sandbox.run_python(code, limits=FAST)
    port = int(r.stdout.strip())
    assert r.status == "ok" and r.events == ["network_bind", "network_listen"]
    assert r.attempts == ["listen_attempt socket.listen ('0.0.0.0', 0)",
                          "bind_attempt socket.bind ('127.0.0.1', 0)",
                          f"listen_attempt socket.listen ('127.0.0.1', {port})"]


def test_connect_with_the_error_hidden_is_reported():
    code = f"{SWALLOW}s = socket.socket()\ns.settimeout(2)\nquiet(lambda: s.connect(('10.1.2.3', 80)))\n"
    r = sandbox.run_python(code, limits=FAST)
    assert r.status == "ok" and r.events == ["network_denied"]
    assert r.attempts == ["network_attempt ('10.1.2.3', 80)"]


def test_sendto_is_reported():
    code = f"{SWALLOW}u = socket.socket(type=socket.SOCK_DGRAM)\nquiet(lambda: u.sendto(b'x', ('10.1.2.3', 9)))\n"
    r = sandbox.run_python(code, limits=FAST)
    assert r.status == "ok" and r.events == ["network_denied"]
    assert r.attempts == ["network_attempt socket.sendto ('10.1.2.3', 9)"]


SPAWNS = {
    "os.fork": ("pid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)", "os.fork"),
    "os.system": ("os.system('true')", "os.system"),
    "subprocess": ("subprocess.run(['true'], stdout=subprocess.DEVNULL)", "subprocess.Popen"),
    "os.posix_spawn": ("os.waitpid(os.posix_spawn('/bin/true', ['true'], {}), 0)", "os.posix_spawn"),
    "os.spawnv": ("os.spawnv(os.P_WAIT, '/bin/true', ['true'])", "os.fork", "os.exec"),   # fork, then exec
    "os.execv": ("os.execv('/bin/true', ['true'])", "os.exec"),
}


@pytest.mark.parametrize("case", sorted(SPAWNS))
def test_every_process_creation_path_is_reported(case):
    code, *events = SPAWNS[case]
    r = sandbox.run_python(f"{SWALLOW}{code}\n", limits=FAST)
    assert r.status == "ok", r.stderr
    assert r.events == ["spawned_process"] and r.attempts == [f"spawn_attempt {e}" for e in events]
