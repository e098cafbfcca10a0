"""Run untrusted code (generated solutions and tests) in a contained subprocess.

Containment, in layers, because each layer alone has a hole:
- fresh PID, network and mount namespaces (`unshare`): the namespace dies with its first process, so a
  wall-time kill takes every descendant with it (fork bombs included); the network namespace has no
  route out (connect() fails with ENETUNREACH);
- a per-sandbox unprivileged uid (when we are root) or a user namespace (when we are not): RLIMIT_NPROC
  does not bind root, but it binds this uid, which owns no other process, so a fork bomb stops at `nproc`;
- every mount re-mounted read-only inside the mount namespace except the throw-away sandbox dir, so
  world-writable places such as /tmp and /dev/shm cannot be written either;
- rlimits: CPU seconds (SIGXCPU), address space (MemoryError), file size (SIGXFSZ, also caps output),
  open files, no core dumps;
- for Python code, an audit hook logs attempts (writes outside the dir through every audited path,
  connect/sendto, bind, listen, process creation) so each case is *reported*, not only contained.
Not covered: reading world-readable files on the host; CPU time of a bomb's short-lived children
beyond the wall limit. The namespace approach needs Linux with `unshare` (util-linux)."""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefdata.errors import SandboxError

# Shell run as PID 1 of the new namespaces (as root there): make the filesystem read-only except the
# sandbox dir, then drop to the sandbox uid with rlimits and run the command. sh stays PID 1 (no exec)
# so it reaps orphans and reports a signal death as 128+signo.
_INIT = r'''
sb="$1"; uid="$2"; shift 2
mount --make-rprivate / 2>/dev/null
awk '{print $2}' /proc/self/mounts | sort -u | while read -r m; do
  case "$m" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/pts) continue;; esac
  mount -o remount,bind,ro "$m" 2>/dev/null || { mount --bind "$m" "$m" && mount -o remount,bind,ro "$m"; } \
    || { echo "prefdata-sandbox: cannot make $m read-only" >&2; exit 97; }
done || exit 97
mount --bind "$sb" "$sb" && mount -o remount,bind,rw "$sb" || { echo "prefdata-sandbox: cannot bind $sb" >&2; exit 97; }
cd "$sb" || exit 97
if [ "$uid" = "-" ]; then "$@"; else
  setpriv --reuid="$uid" --regid="$uid" --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"
fi
'''

# Prepended to Python code: records attempts through an audit hook (cannot be removed by the code).
# One line per attempt:
#   write_attempt <audit event> <path>   a write outside the sandbox dir through any audited path: open()
#       or os.open() with write flags, mkdir, rename/replace, remove/unlink, rmdir, link, symlink, truncate,
#       chmod, chown, utime, shutil copies/moves/rmtree/chown/archives (shutil's own opens are logged too);
#   network_attempt <address>             connect (sendto / sendmsg: network_attempt <event> <address>);
#   bind_attempt socket.bind <address>, listen_attempt socket.listen <address>;
#   spawn_attempt <audit event>           fork, forkpty, exec, posix_spawn, system, subprocess.Popen.
# CPython raises no audit event for listen(), so at the first socket created the hook wraps
# socket.socket.listen to raise one (a listen through `_socket` directly is still contained by the network
# namespace, only not reported). Likewise os.open's "open" event does not carry dir_fd, so a relative
# name under another directory's fd is judged against the cwd (contained by the read-only mounts, not
# reported); every other write event carries its dir_fd. The hook must not raise audited events itself
# (it would re-enter), so it only uses os.write, os.readlink and os.path.
_AUDIT = r"""
import sys as _s, os as _o
def _prefdata_audit(ev, args, _fd=int(_o.environ.get("PREFDATA_AUDIT_FD", "-1")), _wr=_o.write,
                    _root=_o.path.realpath(_o.getcwd()), _dec=_o.fsdecode, _path=_o.path, _rl=_o.readlink,
                    _wflags=_o.O_WRONLY | _o.O_RDWR | _o.O_CREAT | _o.O_TRUNC | _o.O_APPEND,
                    _harmless=("/dev/null", "/dev/stdout", "/dev/stderr"),
                    # audit event -> (position of a path it writes, position of that path's dir_fd or None)
                    _writes={"os.mkdir": ((0, 2),), "os.rename": ((0, 2), (1, 3)), "os.remove": ((0, 1),),
                             "os.rmdir": ((0, 1),), "os.link": ((1, 3),), "os.symlink": ((1, 2),),
                             "os.truncate": ((0, None),), "os.chmod": ((0, 2),), "os.chown": ((0, 3),),
                             "os.utime": ((0, 3),), "shutil.copyfile": ((1, None),),
                             "shutil.copymode": ((1, None),), "shutil.copystat": ((1, None),),
                             "shutil.copytree": ((1, None),), "shutil.move": ((0, None), (1, None)),
                             "shutil.rmtree": ((0, 1),), "shutil.chown": ((0, None),),
                             "shutil.make_archive": ((0, None),), "shutil.unpack_archive": ((1, None),)},
                    _spawns=("os.fork", "os.forkpty", "os.posix_spawn", "os.posix_spawnp", "subprocess.Popen",
                             "os.system", "os.exec"),
                    _sends=("socket.sendto", "socket.sendmsg"), _mods=_s.modules, _sysaudit=_s.audit):
    _w = lambda s: _wr(_fd, s.encode("utf-8", "backslashreplace")) if _fd >= 0 else None
    def _outside(p, dir_fd):
        # the absolute path when `p` lies outside the sandbox dir (symlinks resolved), else None
        if not isinstance(p, (str, bytes)):
            return None          # an fd: opened (and logged) before
        p = _dec(p)
        if not _path.isabs(p) and isinstance(dir_fd, int) and dir_fd >= 0:
            p = _path.join(_rl("/proc/self/fd/%d" % dir_fd), p)
        a = _path.abspath(p)
        if a in _harmless:       # subprocess.DEVNULL opens /dev/null read-write
            return None
        r = _path.realpath(a)
        return None if r == _root or r.startswith(_root + "/") else a
    try:
        if ev == "open":
            if len(args) > 2 and isinstance(args[2], int) and args[2] & _wflags:
                p = _outside(args[0], None)
                if p is not None:
                    _w("write_attempt %s %s\n" % ("os.open" if args[1] is None else "open", p))
        elif ev in _writes:
            for i, d in _writes[ev]:
                p = _outside(args[i], args[d] if d is not None and len(args) > d else None) if len(args) > i else None
                if p is not None:
                    _w("write_attempt %s %s\n" % (ev, p))
        elif ev == "socket.connect":
            _w("network_attempt %r\n" % (args[1],))
        elif ev in _sends:
            _w("network_attempt %s %r\n" % (ev, args[1]))
        elif ev == "socket.bind":
            _w("bind_attempt socket.bind %r\n" % (args[1],))
        elif ev == "socket.listen":
            _w("listen_attempt socket.listen %r\n" % (args[0].getsockname(),))
        elif ev == "socket.__new__":
            _c = getattr(_mods.get("socket"), "socket", None)
            if isinstance(_c, type) and not getattr(_c.listen, "_prefdata", False):
                def listen(self, *a, _orig=_c.listen, _audit=_sysaudit):
                    _audit("socket.listen", self, *a)
                    return _orig(self, *a)
                listen._prefdata = True
                _c.listen = listen
        elif ev in _spawns:
            _w("spawn_attempt %s\n" % ev)
    except Exception:
        pass
_s.addaudithook(_prefdata_audit)
del _s, _o, _prefdata_audit
"""

_SIGNALS = {9: "SIGKILL", 24: "SIGXCPU", 25: "SIGXFSZ", 11: "SIGSEGV", 6: "SIGABRT"}


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0        # killed (whole namespace) after this many seconds
    cpu_s: int = 5              # RLIMIT_CPU: SIGXCPU at the soft limit
    memory_mb: int = 512        # RLIMIT_AS (virtual memory)
    nproc: int = 32             # RLIMIT_NPROC for the sandbox uid
    fsize_mb: int = 16          # RLIMIT_FSIZE: largest file (and stdout/stderr) the code may write
    nofile: int = 64            # RLIMIT_NOFILE
    output_chars: int = 20_000  # how much stdout/stderr is kept in the result


@dataclass
class RunResult:
    status: str                 # ok | failed | timeout | cpu_limit | memory_limit | output_limit | crashed
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    events: list[str] = field(default_factory=list)      # contained attempts: fork_limit, network_denied, ...
    attempts: list[str] = field(default_factory=list)    # raw audit lines (Python code only)
    uid: int | None = None                               # the sandbox uid (None in user-namespace mode)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def report(self) -> dict:
        return {"status": self.status, "returncode": self.returncode, "wall_s": round(self.wall_s, 4),
                "events": self.events, "attempts": self.attempts[:20]}


_counter = itertools.count()


def _sandbox_uid() -> int:
    # A uid no account uses, distinct per concurrent sandbox in this process (and likely across processes),
    # so RLIMIT_NPROC counts only this sandbox's processes.
    return 200_000 + (os.getpid() % 4000) * 200 + next(_counter) % 200


def _isolation() -> str:
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        raise SandboxError("the code sandbox needs `unshare` and `setpriv` (util-linux) on PATH")
    forced = os.environ.get("PREFDATA_SANDBOX_ISOLATION")
    if forced in ("uid", "userns"):
        if forced == "uid" and os.geteuid() != 0:
            raise SandboxError("PREFDATA_SANDBOX_ISOLATION=uid needs root (to switch to the sandbox uid)")
        return forced
    return "uid" if os.geteuid() == 0 else "userns"


def _classify(rc: int | None, timed_out: bool, stderr: str, attempts: list[str],
              nproc: int) -> tuple[str, list[str]]:
    events: list[str] = []
    spawns = sum(a.startswith("spawn_attempt") for a in attempts)
    # more fork attempts than the process cap allows means some were refused, even if the code hid the error
    if ("Resource temporarily unavailable" in stderr or "BlockingIOError" in stderr or "fork: retry" in stderr
            or spawns > nproc):
        events.append("fork_limit")
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr or "std::bad_alloc" in stderr:
        events.append("memory_limit")
    if "Network is unreachable" in stderr or "Errno 101" in stderr or any(a.startswith("network_attempt")
                                                                            for a in attempts):
        events.append("network_denied")
    if "Read-only file system" in stderr or any(a.startswith("write_attempt") for a in attempts):
        events.append("write_denied")
    # bind / listen succeed inside the empty network namespace (nothing outside can reach them): contained
    if any(a.startswith("bind_attempt") for a in attempts):
        events.append("network_bind")
    if any(a.startswith("listen_attempt") for a in attempts):
        events.append("network_listen")
    if spawns and "fork_limit" not in events:
        events.append("spawned_process")
    if "File too large" in stderr or "Errno 27" in stderr:
        events.append("output_limit")
    if timed_out:
        return "timeout", events + ["timeout"]
    sig = rc - 128 if rc is not None and rc > 128 else None
    if sig == 24:
        return "cpu_limit", events + ["cpu_limit"]
    if sig == 25:
        return "output_limit", list(dict.fromkeys(events + ["output_limit"]))
    if rc == 0:
        return "ok", events
    if "memory_limit" in events:
        return "memory_limit", events
    if "output_limit" in events:
        return "output_limit", events
    if sig is not None:
        return "crashed", events + [f"signal_{_SIGNALS.get(sig, sig)}"]
    return "failed", events


def _read_head(path: Path, n: int) -> str:
    with open(path, "rb") as f:
        return f.read(n).decode("utf-8", "replace")


def run(argv: list[str], *, files: dict[str, str] | None = None, limits: Limits = Limits(),
        stdin: str | None = None, python_audit: bool = False) -> RunResult:
    """Run `argv` inside a fresh sandbox dir holding `files` (name -> text). The dir is deleted after."""
    mode = _isolation()
    host = Path(tempfile.mkdtemp(prefix="prefdata-sbx-"))
    sb = host / "work"
    sb.mkdir()
    os.chmod(host, 0o755)
    uid = _sandbox_uid() if mode == "uid" else None
    try:
        for name, text in (files or {}).items():
            p = (sb / name).resolve()
            if sb.resolve() not in p.parents:
                raise SandboxError(f"sandbox file name {name!r} escapes the sandbox dir")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        if uid is not None:
            for p in [sb, *sb.rglob("*")]:
                os.chown(p, uid, uid)
        os.chmod(sb, 0o700)
        rl = [f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}", f"--as={limits.memory_mb << 20}",
              f"--nproc={limits.nproc}", f"--fsize={limits.fsize_mb << 20}", f"--nofile={limits.nofile}",
              "--core=0"]
        env = ["env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", f"HOME={sb}", "LANG=C.UTF-8",
               "PYTHONDONTWRITEBYTECODE=1", "PYTHONHASHSEED=0"]
        ns = ["unshare", "--mount", "--pid", "--net", "--fork", "--kill-child", "--mount-proc"]
        if mode == "userns":
            ns[1:1] = ["--user", "--map-root-user"]
        cmd = [*ns, "sh", "-c", _INIT, "sh", str(sb), str(uid) if uid is not None else "-",
               "prlimit", *rl, "--", *env, *argv]
        out_p, err_p, audit_p = host / "stdout", host / "stderr", host / "audit"
        with open(out_p, "wb") as out, open(err_p, "wb") as err, open(audit_p, "wb") as audit:
            t0 = time.perf_counter()
            # the audit log stays open across exec (pass_fds); the hook finds it through PREFDATA_AUDIT_FD
            cmd.insert(cmd.index("env") + 3, f"PREFDATA_AUDIT_FD={audit.fileno()}")
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                    stdout=out, stderr=err, pass_fds=(audit.fileno(),), start_new_session=True)
            timed_out = False
            try:
                proc.communicate(input=stdin.encode() if stdin is not None else None, timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.kill()   # --kill-child: the namespace's PID 1 gets SIGKILL, taking every descendant
                proc.wait()
            wall = time.perf_counter() - t0
        stdout = _read_head(out_p, limits.output_chars)
        stderr = _read_head(err_p, limits.output_chars)
        attempts = _read_head(audit_p, 100_000).splitlines() if python_audit else []
        if proc.returncode == 97 and "prefdata-sandbox:" in stderr:
            raise SandboxError(f"could not set up the sandbox: {stderr.strip().splitlines()[-1]}")
        status, events = _classify(None if timed_out else proc.returncode, timed_out, stderr, attempts,
                                   limits.nproc)
        return RunResult(status, None if timed_out else proc.returncode, stdout, stderr, wall,
                         list(dict.fromkeys(events)), attempts, uid)
    finally:
        shutil.rmtree(host, ignore_errors=True)


def _world_executable(path: Path) -> bool:
    # the sandbox uid is "other" to every file: it needs o+x on the binary and on each parent dir
    path = path.resolve()
    try:
        return bool(path.stat().st_mode & 0o001) and all(p.stat().st_mode & 0o001 for p in path.parents)
    except OSError:
        return False


def python_command() -> str:
    """The interpreter for sandboxed Python (stdlib only): $PREFDATA_SANDBOX_PYTHON, else this
    interpreter when the sandbox uid can execute it, else the system python3."""
    env = os.environ.get("PREFDATA_SANDBOX_PYTHON")
    candidates = [env] if env else [sys.executable, getattr(sys, "_base_executable", ""), "/usr/bin/python3",
                                    shutil.which("python3") or ""]
    for c in candidates:
        if c and (os.geteuid() != 0 or _world_executable(Path(c))):
            return str(Path(c).resolve()) if os.geteuid() == 0 else c
    raise SandboxError("no Python interpreter the sandbox user can execute (set PREFDATA_SANDBOX_PYTHON)")


def run_python(code: str, *, files: dict[str, str] | None = None, limits: Limits = Limits(),
               stdin: str | None = None) -> RunResult:
    """Run Python source in the sandbox (isolated mode, audit hook on). Exit 0 = ok."""
    all_files = dict(files or {})
    all_files["__main__.py"] = _AUDIT + "\n" + code
    return run([python_command(), "-I", "-B", "__main__.py"], files=all_files, limits=limits, python_audit=True)


def leftover_processes(uid: int) -> int:
    """How many live processes run as `uid` (used by tests to check nothing escaped a kill)."""
    n = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                for line in (d / "status").read_text().splitlines():
                    if line.startswith("Uid:") and int(line.split()[1]) == uid:
                        n += 1
            except (OSError, ValueError):
                continue
    return n


def wait_for_no_processes(uid: int, timeout_s: float = 10.0) -> int:
    """Poll until no process runs as `uid` (a killed pid namespace is torn down asynchronously by the
    kernel); returns how many are left when the time is up (0 = all gone)."""
    deadline = time.monotonic() + timeout_s
    while (left := leftover_processes(uid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def timing_harness(setup: str, body: str, repeats: int) -> str:
    """Python source that runs `setup` once, then `body` `repeats` times, printing per-repeat seconds as JSON
    on the last stdout line (code efficiency is measured inside the sandbox, so start-up is not counted)."""
    return (f"import time as _t, json as _j\n{setup}\n_ts = []\nfor _ in range({int(repeats)}):\n"
            f"    _t0 = _t.perf_counter()\n" + "\n".join("    " + ln for ln in body.splitlines() or ["pass"])
            + "\n    _ts.append(_t.perf_counter() - _t0)\nprint()\nprint(_j.dumps(_ts))\n")


def parse_timings(stdout: str) -> list[float] | None:
    lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    try:
        ts = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    return [float(t) for t in ts] if isinstance(ts, list) else None
