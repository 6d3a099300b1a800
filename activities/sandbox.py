"""The code sandbox: the ``python`` tool and the ``run_code`` activity.

Generated Python runs in a child process that cannot harm the worker, read its secrets
or reach the network. The isolation is built from well-kept parts rather than home-made
ones:

- **bubblewrap** (the Debian package ``bubblewrap``) puts the code in new user, PID,
  network, IPC, UTS and cgroup namespaces: no network but an empty loopback of its own, no
  view of the worker's processes, a read-only view of ``/usr`` (the interpreter and its
  libraries) and nothing else of the host's filesystem; the work dir, ``/tmp`` and
  ``/dev/shm`` are fresh size-limited tmpfs mounts that vanish with the sandbox. Nested
  user namespaces are disabled. When the worker runs as root, bwrap itself is started
  as an unprivileged uid (``PLANSMITH_SANDBOX_UID``, default 65534), so the code owns
  nothing on the host and the kernel enforces ``RLIMIT_NPROC`` on it.
- **rlimits** (CPU seconds, address space, file size, open files, processes; no core
  files), set by a small runner inside the sandbox before it starts the code, so the
  code inherits them and cannot raise them.
- a **wall-clock timeout**: bwrap runs in its own session and process group; on timeout
  (or cancellation, or an output flood) the group is killed, the sandbox's PID 1 dies and
  the kernel kills every process left in the namespace, daemons included. When the code
  ends normally the same happens to whatever it left behind.
- an **empty environment**: bwrap is started with ``PATH`` only and clears that too.

When bwrap is missing or the kernel refuses the namespaces, ``run_code`` refuses to run
with a clear ``SandboxUnavailable`` error, unless the operator opted out on purpose with
``PLANSMITH_SANDBOX_ISOLATION=none`` (then: a limited child process in a temporary
directory, no namespaces; every record says so).

The runner talks to the host over three channels: the job (JSON) on its stdin, the code
and a few tiny files (``/etc/passwd``…) bound read-only through memfds, and its report
(exit status, resource usage, declared output files) on a pipe the code never gets.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.steps import StepOutcome, StepTask, run_tool
from activities.tools import ToolContext, ToolError, get_tool, tool
from plansmith.sandbox_settings import SandboxSettings, get_sandbox_settings

log = logging.getLogger("plansmith.sandbox")

RUN_CODE = "run_code"
SANDBOX_QUEUE = "sandbox"
TOOL_NAME = "python"
WORKDIR = "/sandbox"
CODE_PATH = "/code/main.py"
HEARTBEAT_EVERY_S = 1.0
KILL_GRACE_S = 3.0  # after a kill, how long to wait for the pipes to close
MB = 1024 * 1024
_PATH_CHARS = re.compile(r"^[A-Za-z0-9._@+=,-]+$")

Outcome = Literal[
    "ok",
    "error",
    "timeout",
    "cancelled",
    "killed",
    "cpu_limit",
    "memory_limit",
    "file_size_limit",
    "disk_limit",
    "process_limit",
    "open_files_limit",
    "output_limit",
    "output_error",
    "no_network",
    "read_only",
    "denied",
]


class SandboxUnavailable(ToolError):
    """The isolation cannot be built on this worker: refuse to run the code."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False, kind="SandboxUnavailable")


class SandboxFailed(ToolError):
    """The code ran and did not succeed; ``record`` is its run record."""

    def __init__(self, message: str, *, kind: str, record: dict[str, Any]):
        super().__init__(message, retryable=False, kind=kind)
        self.record = record


class Limits(BaseModel):
    timeout_s: float = Field(gt=0)
    cpu_s: int = Field(ge=1)
    memory_mb: int = Field(ge=32)
    file_size_mb: int = Field(ge=1)
    disk_mb: int = Field(ge=1)
    processes: int = Field(ge=1)
    open_files: int = Field(ge=16)


class SandboxRequest(BaseModel):
    code: str
    stdin: bytes = b""
    files: dict[str, bytes] = Field(default_factory=dict)
    outputs: list[str] = Field(default_factory=list)
    limits: Limits


class SandboxResult(BaseModel):
    outcome: Outcome
    reason: str
    exit_code: int | None = None
    signal: str | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    duration_s: float = 0.0
    peak_memory_bytes: int | None = None
    cpu_s: float | None = None
    files: dict[str, bytes] = Field(default_factory=dict)
    file_problems: dict[str, str] = Field(default_factory=dict)
    left_behind: int = 0
    isolation: str = ""
    python: str = ""
    limits: Limits

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


# --- isolation ------------------------------------------------------------------------


@dataclass(frozen=True)
class Isolation:
    mode: Literal["bwrap", "none"]
    python: str
    python_version: str
    python_prefix: str | None  # bound read-only when the interpreter lives outside /usr
    bwrap: str | None
    switch_user: bool  # the worker is root: start the sandbox as the unprivileged uid
    description: str


_ISOLATION: dict[tuple[Any, ...], Isolation] = {}
_ISOLATION_LOCK = threading.Lock()


def isolation(settings: SandboxSettings | None = None) -> Isolation:
    """What this worker can build, probed once (a refusal is probed again next time).

    Raises:
        SandboxUnavailable: bwrap is missing or cannot create the namespaces here, and
            the operator did not opt out with ``PLANSMITH_SANDBOX_ISOLATION=none``.
    """
    s = settings or get_sandbox_settings()
    key = (s.isolation, s.bwrap, s.python, s.uid, s.gid, os.geteuid())
    with _ISOLATION_LOCK:
        found = _ISOLATION.get(key)
        if found is None:
            found = _probe(s)
            _ISOLATION[key] = found
        return found


def _probe(s: SandboxSettings) -> Isolation:
    switch = os.geteuid() == 0
    if s.isolation == "none":
        python, prefix, version = _first_python(s, switch)
        return Isolation(
            mode="none",
            python=python,
            python_version=version,
            python_prefix=prefix,
            bwrap=None,
            switch_user=switch,
            description=(
                "NONE (PLANSMITH_SANDBOX_ISOLATION=none): a child process with rlimits, "
                "an empty environment and a temporary work dir; no namespaces, so it shares "
                "the worker's network and filesystem view"
                + (
                    f"; runs as uid {s.uid}"
                    if switch
                    else "; runs as the worker's own uid, so the process limit is not enforced"
                )
            ),
        )
    bwrap = shutil.which(s.bwrap)
    if bwrap is None:
        raise SandboxUnavailable(
            f"sandbox isolation is unavailable: bubblewrap ({s.bwrap!r}) is not installed on "
            "this worker. Install the Debian package (`apt-get install -y bubblewrap`; "
            "`make install` does it), or set PLANSMITH_SANDBOX_ISOLATION=none to run "
            "generated code WITHOUT isolation (not recommended). The code was not run."
        )
    errors = []
    for python, prefix in _python_candidates(s):
        argv = [
            *_bwrap_base(bwrap, prefix, s.disk_mb),
            "--remount-ro",
            "/",
            "--",
            python,
            "-I",
            "-c",
            "import sys; print('%d.%d.%d' % sys.version_info[:3])",
        ]
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=20,
                env={"PATH": "/usr/bin:/bin"},
                cwd="/",
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **_user_kwargs(s, switch),
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            errors.append(f"{python}: {type(e).__name__}: {e}")
            continue
        if done.returncode == 0:
            version = done.stdout.strip()
            try:
                bw_version = subprocess.run(
                    [bwrap, "--version"], capture_output=True, text=True, timeout=10
                ).stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                bw_version = "bwrap"
            who = f"uid {s.uid}" if switch else f"the worker's uid {os.geteuid()}"
            return Isolation(
                mode="bwrap",
                python=python,
                python_version=version,
                python_prefix=prefix,
                bwrap=bwrap,
                switch_user=switch,
                description=(
                    f"{bw_version}: new user, pid, network, ipc, uts and cgroup namespaces; "
                    f"read-only /usr; tmpfs work dir, /tmp and /dev/shm; runs as {who}"
                ),
            )
        errors.append(f"{python}: {done.stderr.strip()[:300] or f'exit {done.returncode}'}")
    raise SandboxUnavailable(
        "sandbox isolation is unavailable: bubblewrap cannot build the sandbox on this "
        "worker (" + "; ".join(errors) + "). The kernel may forbid unprivileged user "
        "namespaces (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone, "
        "AppArmor's apparmor_restrict_unprivileged_userns) or a container may block them. "
        "Fix that, or set PLANSMITH_SANDBOX_ISOLATION=none to run generated code WITHOUT "
        "isolation (not recommended). The code was not run."
    )


def _python_candidates(s: SandboxSettings) -> Any:
    names = (
        [s.python]
        if s.python
        else [
            getattr(sys, "_base_executable", None) or sys.executable,
            "/usr/bin/python3",
            "/usr/local/bin/python3",
        ]
    )
    seen = set()
    for name in names:
        found = shutil.which(name) or name
        real = os.path.realpath(found)
        if real in seen or not os.path.isfile(real):
            continue
        seen.add(real)
        prefix = None if real.startswith("/usr/") else os.path.dirname(os.path.dirname(real))
        yield real, prefix
    if not seen:
        raise SandboxUnavailable(f"no Python interpreter found for the sandbox (tried {names})")


def _first_python(s: SandboxSettings, switch: bool) -> tuple[str, str | None, str]:
    """The first interpreter the code's user can run (unisolated mode)."""
    errors = []
    for python, prefix in _python_candidates(s):
        try:
            done = subprocess.run(
                [python, "-I", "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                capture_output=True,
                text=True,
                timeout=20,
                env={"PATH": "/usr/bin:/bin"},
                cwd="/",
                stdin=subprocess.DEVNULL,
                **_user_kwargs(s, switch),
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            errors.append(f"{python}: {type(e).__name__}: {e}")
            continue
        if done.returncode == 0:
            return python, prefix, done.stdout.strip()
        errors.append(f"{python}: {done.stderr.strip()[:300] or f'exit {done.returncode}'}")
    raise SandboxUnavailable(
        "no Python interpreter the sandbox user can run (" + "; ".join(errors) + "); set "
        "PLANSMITH_SANDBOX_PYTHON. The code was not run."
    )


def _user_kwargs(s: SandboxSettings, switch: bool) -> dict[str, Any]:
    return {"user": s.uid, "group": s.gid, "extra_groups": []} if switch else {}


def _bwrap_base(bwrap: str, prefix: str | None, disk_mb: int) -> list[str]:
    size = str(disk_mb * MB)
    argv = [
        bwrap,
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
        "--clearenv",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            argv += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            argv += ["--ro-bind", name, name]
    for name in ("/etc/ld.so.cache", "/etc/localtime"):
        argv += ["--ro-bind-try", name, name]
    if prefix:
        argv += ["--ro-bind", prefix, prefix]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    for mount in (WORKDIR, "/tmp", "/dev/shm"):
        argv += ["--size", size, "--tmpfs", mount]
    argv += ["--remount-ro", "/dev"]
    return argv


# --- the runner inside the sandbox ----------------------------------------------------

# Runs as the sandbox's first process under the sandbox's own interpreter (stdlib only).
# It applies the rlimits to itself, so the code inherits them and cannot raise them,
# makes itself non-dumpable so the code can neither ptrace it nor write to its report
# pipe through /proc, and reports on a pipe the code does not inherit.
_RUNNER = r"""# plansmith-sandbox-runner
import base64, json, os, resource, stat, subprocess, sys, time

def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

def inside(work, rel):
    path = os.path.realpath(os.path.join(work, rel))
    if not path.startswith(work.rstrip("/") + "/"):
        raise ValueError("outside the work dir")
    return path

def rss(everyone, pid):
    # resident memory of the code's processes: every process of the sandbox's own PID
    # namespace but PID 1 and the runner, else only the code's first process
    me = os.getpid()
    if everyone:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]
    else:
        pids = [str(pid)]
    total = 0
    for p in pids:
        try:
            with open("/proc/%s/statm" % p) as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total

PAGE = os.sysconf("SC_PAGE_SIZE")

def main():
    out = int(sys.argv[1])
    write_all(out, b"started\n")
    try:
        import ctypes
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
    except Exception:
        pass
    job = json.loads(sys.stdin.buffer.read())
    work = job["workdir"]
    for rel, data in job["files"].items():
        path = inside(work, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
    stdin = os.memfd_create("stdin")
    write_all(stdin, base64.b64decode(job["stdin"]))
    os.lseek(stdin, 0, 0)
    if job["nice"]:
        os.nice(job["nice"])
    for name, soft, hard in job["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    report = {"returncode": None}
    try:
        child = subprocess.Popen(job["argv"], stdin=stdin, cwd=work, env=job["env"], close_fds=True)
    except OSError as e:
        report["spawn_error"] = "%s: %s" % (type(e).__name__, e)
    else:
        os.close(stdin)
        peak = sent = 0
        delay = 0.01
        while True:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
            if pid:
                child.returncode = report["returncode"] = os.waitstatus_to_exitcode(status)
                break
            peak = max(peak, rss(job["count_left_behind"], child.pid))
            if peak > sent + 1048576:
                write_all(out, b"peak %d\n" % peak)
                sent = peak
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        report["sampled_peak"] = peak
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    report["maxrss_kb"] = usage.ru_maxrss
    report["cpu_s"] = usage.ru_utime + usage.ru_stime
    if job["count_left_behind"]:
        me = os.getpid()
        report["left_behind"] = sum(
            1 for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)
        )
    files, problems = {}, {}
    budget = job["max_files_bytes"]
    for rel in job["outputs"]:
        try:
            path = inside(work, rel)
            st = os.lstat(path)
        except FileNotFoundError:
            problems[rel] = "missing: the code did not write it"
            continue
        except (OSError, ValueError) as e:
            problems[rel] = str(e)
            continue
        if not stat.S_ISREG(st.st_mode):
            problems[rel] = "not a regular file"
        elif st.st_size > job["max_file_bytes"]:
            problems[rel] = "%d bytes, above the limit of %d bytes per output file" % (
                st.st_size, job["max_file_bytes"])
        elif st.st_size > budget:
            problems[rel] = "%d bytes, above what is left of the %d bytes for all output files" % (
                st.st_size, job["max_files_bytes"])
        else:
            with open(path, "rb") as f:
                data = f.read(job["max_file_bytes"] + 1)
            if len(data) > min(job["max_file_bytes"], budget):
                problems[rel] = "grew above the output file limit while being read"
            else:
                budget -= len(data)
                files[rel] = base64.b64encode(data).decode()
    report["files"] = files
    report["file_problems"] = problems
    write_all(out, json.dumps(report).encode())

main()
"""


# --- running --------------------------------------------------------------------------


def run_sandboxed(
    request: SandboxRequest,
    settings: SandboxSettings | None = None,
    cancel: threading.Event | None = None,
) -> SandboxResult:
    """Run ``request.code`` in the sandbox and wait for it (blocking; call it in a thread).

    Setting ``cancel`` kills the sandbox at once.

    Raises:
        SandboxUnavailable: the isolation cannot be built here (the code did not run).
        ToolError: the sandbox itself failed to start (retryable).
    """
    s = settings or get_sandbox_settings()
    iso = isolation(s)
    limits = request.limits
    owned: set[int] = set()  # fds to close at the end (each exactly once: numbers get reused)
    tmp: str | None = None
    try:
        if iso.mode == "bwrap":
            workdir, tmpdir = WORKDIR, "/tmp"
            code_path = CODE_PATH
            data_files = {
                CODE_PATH: request.code.encode(),
                "/etc/passwd": (
                    f"root:x:0:0:root:/:/usr/sbin/nologin\n"
                    f"sandbox:x:{os.geteuid() if not iso.switch_user else s.uid}:"
                    f"{os.getegid() if not iso.switch_user else s.gid}::{WORKDIR}:/usr/sbin/nologin\n"
                ).encode(),
                "/etc/group": b"root:x:0:\nsandbox:x:%d:\n"
                % (s.gid if iso.switch_user else os.getegid()),
                "/etc/hosts": b"127.0.0.1 localhost sandbox\n::1 localhost\n",
            }
            data_fds = {dest: _memfd(dest, data) for dest, data in data_files.items()}
            owned.update(data_fds.values())
        else:
            tmp = tempfile.mkdtemp(prefix="plansmith-sandbox-")
            os.chmod(tmp, 0o711)
            workdir, tmpdir = os.path.join(tmp, "work"), os.path.join(tmp, "tmp")
            code_path = os.path.join(tmp, "main.py")
            for d in (workdir, tmpdir):
                os.mkdir(d, 0o700)
                if iso.switch_user:
                    os.chown(d, s.uid, s.gid)
            with open(code_path, "w", encoding="utf-8") as f:
                f.write(request.code)
            os.chmod(code_path, 0o644)
            data_fds = {}
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": workdir,
            "TMPDIR": tmpdir,
            "LANG": "C.UTF-8",
            "USER": "sandbox",
        }
        enforce_nproc = iso.mode == "bwrap" or iso.switch_user
        rlimits = [
            ("RLIMIT_CPU", limits.cpu_s, limits.cpu_s + 1),
            ("RLIMIT_AS", limits.memory_mb * MB, limits.memory_mb * MB),
            ("RLIMIT_FSIZE", limits.file_size_mb * MB, limits.file_size_mb * MB),
            ("RLIMIT_NOFILE", limits.open_files, limits.open_files),
            ("RLIMIT_CORE", 0, 0),
        ]
        if enforce_nproc:
            # the sandbox's PID 1 and the runner count too
            extra = 2 if iso.mode == "bwrap" else 1
            rlimits.append(("RLIMIT_NPROC", limits.processes + extra, limits.processes + extra))
        job = {
            "workdir": workdir,
            "files": {k: base64.b64encode(v).decode() for k, v in request.files.items()},
            "stdin": base64.b64encode(request.stdin).decode(),
            "nice": s.nice,
            "rlimits": rlimits,
            "argv": [iso.python, "-I", "-B", code_path],
            "env": env,
            "outputs": list(request.outputs),
            "max_file_bytes": s.max_output_file_bytes,
            "max_files_bytes": s.max_output_files_bytes,
            "count_left_behind": iso.mode == "bwrap",
        }
        job_fd = _memfd("job", json.dumps(job).encode())
        owned.add(job_fd)
        result_r, result_w = os.pipe()
        owned.update((result_r, result_w))
        pipes = {"result": (result_r, result_w)}
        runner = [iso.python, "-I", "-B", "-c", _RUNNER, str(result_w)]
        if iso.mode == "bwrap":
            assert iso.bwrap is not None
            _, info_w = pipes["info"] = os.pipe()
            owned.update(pipes["info"])
            argv = _bwrap_base(iso.bwrap, iso.python_prefix, limits.disk_mb)
            for dest, fd in data_fds.items():
                argv += ["--ro-bind-data", str(fd), dest]
            argv += ["--remount-ro", "/", "--chdir", WORKDIR, "--info-fd", str(info_w)]
            for key, value in env.items():
                argv += ["--setenv", key, value]
            argv += ["--", *runner]
        else:
            argv = runner
        return _supervise(
            argv, job_fd, pipes, list(data_fds.values()), owned, iso, s, request, cancel
        )
    finally:
        for fd in owned:
            with contextlib.suppress(OSError):
                os.close(fd)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name.strip("/").replace("/", "-"))
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class _Capture:
    def __init__(self, cap: int):
        self.cap = cap
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        if self.total > len(self.data):
            text += f"\n[... truncated: {self.total - len(self.data)} more bytes not shown]"
        return text


def _supervise(
    argv: list[str],
    job_fd: int,
    pipes: dict[str, tuple[int, int]],
    data_fds: list[int],
    owned: set[int],
    iso: Isolation,
    s: SandboxSettings,
    request: SandboxRequest,
    cancel: threading.Event | None,
) -> SandboxResult:
    limits = request.limits
    started = time.monotonic()
    writers = [w for _, w in pipes.values()]
    try:
        proc = subprocess.Popen(
            argv,
            stdin=job_fd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(*writers, *data_fds),
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
            start_new_session=True,
            **_user_kwargs(s, iso.switch_user),
        )
    except OSError as e:
        raise ToolError(
            f"could not start the sandbox: {e}", retryable=True, kind="SandboxError"
        ) from None
    finally:
        for w in writers:  # only the sandbox may hold the write ends: EOF when it is gone
            owned.discard(w)
            os.close(w)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Capture(s.max_stdout_bytes), _Capture(s.max_stderr_bytes)
    report = _Capture(s.max_output_files_bytes * 2 + 1024 * 1024)
    info = _Capture(64 * 1024)
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, pipes["result"][0]: report}
    if "info" in pipes:
        streams[pipes["info"][0]] = info
    sel = selectors.DefaultSelector()
    for fd in streams:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    deadline = started + limits.timeout_s
    killed: tuple[Outcome, str] | None = None
    kill_deadline = None
    exited_at = None
    init_pidfd: int | None = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if killed is None:
                if cancel is not None and cancel.is_set():
                    killed = ("cancelled", "the step was cancelled; the sandbox was killed")
                elif now >= deadline:
                    killed = (
                        "timeout",
                        f"wall-clock timeout of {limits.timeout_s:g} s exceeded; the sandbox "
                        "and every process in it were killed",
                    )
                else:
                    for name, cap in (("stdout", out), ("stderr", err)):
                        if cap.total > cap.cap * s.flood_factor:
                            killed = (
                                "output_limit",
                                f"{name} exceeded {cap.cap * s.flood_factor} bytes; the sandbox "
                                "was killed",
                            )
                if killed is not None:
                    _kill_group(proc.pid)
                    kill_deadline = now + KILL_GRACE_S
            if kill_deadline is not None and now >= kill_deadline:
                break
            if _exited(proc.pid):
                # Only the sandbox's own processes hold the pipes; once its leader has
                # exited, anything still holding them is left over (unisolated mode).
                exited_at = exited_at or now
                if now - exited_at > 1.0:
                    break
            wait = min(0.1, max(deadline - now, 0.0)) if killed is None else 0.1
            for key, _ in sel.select(wait):
                fd = key.fd
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if chunk:
                    streams[fd].add(chunk)
                    if streams[fd] is info and init_pidfd is None:
                        init_pidfd = _pidfd_of_init(info)
                else:
                    sel.unregister(fd)
    finally:
        sel.close()
        # Kill the group while its leader is a zombie at worst, so its id cannot have
        # been reused by an unrelated process.
        _kill_group(proc.pid)
        _, status = os.waitpid(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
        proc.stderr.close()
        if init_pidfd is not None and init_pidfd >= 0:
            # Killing the sandbox's PID 1 makes the kernel kill every process of its PID
            # namespace (bwrap's --die-with-parent does it too), and PID 1 exits only once
            # they are all gone: wait for that, so nothing the code started outlives the step.
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(init_pidfd, signal.SIGKILL)
                select.select([init_pidfd], [], [], KILL_GRACE_S)
            os.close(init_pidfd)
    duration = time.monotonic() - started
    return _result(request, iso, out, err, report, killed, proc.returncode, duration)


def _pidfd_of_init(info: _Capture) -> int | None:
    """A pidfd of the sandbox's PID 1, from bwrap's --info-fd JSON (once complete)."""
    try:
        pid = int(json.loads(bytes(info.data))["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return -1  # already gone


def _exited(pid: int) -> bool:
    """Whether the process has exited, without reaping it (its id stays reserved)."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _result(
    request: SandboxRequest,
    iso: Isolation,
    out: _Capture,
    err: _Capture,
    report_capture: _Capture,
    killed: tuple[Outcome, str] | None,
    outer_returncode: int,
    duration: float,
) -> SandboxResult:
    limits = request.limits
    lines = bytes(report_capture.data).split(b"\n")
    started = lines[0] == b"started"
    sampled_peak = 0
    report: dict[str, Any] | None = None
    for line in lines[1:]:
        if line.startswith(b"peak "):
            with contextlib.suppress(ValueError):
                sampled_peak = max(sampled_peak, int(line[5:]))
        elif line.startswith(b"{") and report_capture.total == len(report_capture.data):
            with contextlib.suppress(ValueError):
                report = json.loads(line)
    stderr_text = err.text()
    if not started and killed is None:
        raise ToolError(
            f"the sandbox did not start (exit {outer_returncode}): {stderr_text.strip()[-800:]}",
            retryable=True,
            kind="SandboxError",
        )
    base: dict[str, Any] = {
        "stdout": out.text(),
        "stderr": stderr_text,
        "stdout_truncated": out.total > len(out.data),
        "stderr_truncated": err.total > len(err.data),
        "stdout_bytes": out.total,
        "stderr_bytes": err.total,
        "duration_s": round(duration, 3),
        "isolation": iso.description,
        "python": iso.python_version,
        "limits": limits,
        "peak_memory_bytes": sampled_peak or None,
    }
    if report is not None:
        sampled_peak = max(sampled_peak, int(report.get("sampled_peak") or 0))
        biggest = int(report.get("maxrss_kb") or 0) * 1024
        base["peak_memory_bytes"] = max(sampled_peak, biggest) or None
        base["cpu_s"] = round(float(report.get("cpu_s") or 0.0), 3)
        base["left_behind"] = int(report.get("left_behind") or 0)
        base["files"] = {k: base64.b64decode(v) for k, v in (report.get("files") or {}).items()}
        base["file_problems"] = dict(report.get("file_problems") or {})
    if killed is not None:
        outcome, reason = killed
        return SandboxResult(outcome=outcome, reason=reason, **base)
    if report is None:
        return SandboxResult(
            outcome="killed",
            reason="the sandbox's runner ended without a report (the code may have killed it)",
            **base,
        )
    if report.get("spawn_error"):
        outcome, reason = _classify_text(str(report["spawn_error"]), limits)
        if outcome == "error":
            reason = f"the code could not be started: {report['spawn_error']}"
        return SandboxResult(outcome=outcome, reason=reason, **base)
    rc = int(report["returncode"])
    base["exit_code"] = rc
    left = base.get("left_behind", 0)
    left_note = f"; {left} process(es) it left behind were killed with the sandbox" if left else ""
    if rc < 0:
        sig = _signal_name(-rc)
        base["signal"] = sig
        outcome, reason = _classify_signal(-rc, sig, base.get("cpu_s"), limits)
        return SandboxResult(outcome=outcome, reason=reason + left_note, **base)
    if rc != 0:
        outcome, reason = _classify_text(stderr_text, limits)
        if outcome == "error":
            last = _last_line(stderr_text)
            reason = f"exit code {rc}" + (f": {last}" if last else "")
        return SandboxResult(outcome=outcome, reason=reason + left_note, **base)
    problems = base.get("file_problems") or {}
    if problems:
        detail = "; ".join(f"{k}: {v}" for k, v in sorted(problems.items()))
        return SandboxResult(
            outcome="output_error",
            reason=f"exit code 0, but declared output files are not usable: {detail}",
            **base,
        )
    return SandboxResult(outcome="ok", reason="exit code 0" + left_note, **base)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _classify_signal(
    num: int, name: str, cpu_s: float | None, limits: Limits
) -> tuple[Outcome, str]:
    if num == signal.SIGXCPU or (num == signal.SIGKILL and (cpu_s or 0) >= limits.cpu_s):
        return "cpu_limit", f"CPU time limit of {limits.cpu_s} s exceeded (killed by {name})"
    if num == signal.SIGXFSZ:
        return "file_size_limit", f"file size limit of {limits.file_size_mb} MB exceeded ({name})"
    return "killed", f"killed by {name}"


# Matched against the last line of stderr first (the exception), then all of it.
_PATTERNS: list[tuple[re.Pattern[str], Outcome, str]] = [
    (
        re.compile(r"MemoryError|Cannot allocate memory|\[Errno 12\]"),
        "memory_limit",
        "memory limit of {memory_mb} MB (address space) reached",
    ),
    (
        re.compile(r"\[Errno 27\]|File too large"),
        "file_size_limit",
        "file size limit of {file_size_mb} MB per file reached",
    ),
    (
        re.compile(r"\[Errno 28\]|No space left on device"),
        "disk_limit",
        "disk limit of {disk_mb} MB for the work dir (and /tmp) reached",
    ),
    (
        re.compile(r"\[Errno 11\] Resource temporarily unavailable|can't start new thread"),
        "process_limit",
        "process limit of {processes} processes/threads reached (fork refused)",
    ),
    (
        re.compile(r"\[Errno 24\]|Too many open files"),
        "open_files_limit",
        "open files limit of {open_files} reached",
    ),
    (
        re.compile(
            r"\[Errno 101\]|\[Errno 111\]|\[Errno 99\]|Network is unreachable|Connection refused"
            r"|gaierror|Name or service not known|Temporary failure in name resolution"
        ),
        "no_network",
        "network access refused: the sandbox has no network (only a loopback of its own)",
    ),
    (
        re.compile(r"\[Errno 30\]|Read-only file system"),
        "read_only",
        "write refused: everything outside the work dir and /tmp is read-only",
    ),
    (
        re.compile(r"\[Errno 13\]|\[Errno 1\]|Permission denied|Operation not permitted"),
        "denied",
        "permission denied: the code runs unprivileged",
    ),
]


def _classify_text(text: str, limits: Limits) -> tuple[Outcome, str]:
    last = _last_line(text)
    for haystack in (last, text):
        for pattern, outcome, reason in _PATTERNS:
            if pattern.search(haystack):
                detail = f": {last}" if last else ""
                return outcome, reason.format(**limits.model_dump()) + detail
    return "error", "the code failed"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("[...")]
    return lines[-1][:300] if lines else ""


# --- the python tool ------------------------------------------------------------------

_LIMIT_PARAMS = {
    "timeout_s": {"type": "number", "exclusiveMinimum": 0},
    "cpu_s": {"type": "integer", "minimum": 1},
    "memory_mb": {"type": "integer", "minimum": 32},
    "file_size_mb": {"type": "integer", "minimum": 1},
    "disk_mb": {"type": "integer", "minimum": 1},
    "processes": {"type": "integer", "minimum": 1},
    "open_files": {"type": "integer", "minimum": 16},
}

PARAMS_SCHEMA: dict[str, Any] = {
    "properties": {
        "code": {"type": "string", "minLength": 1, "description": "Python 3 source to run"},
        "input": {"description": "any JSON value, written to the program's stdin as JSON"},
        "stdin": {"type": "string", "description": "raw text for stdin (instead of input)"},
        "files": {
            "type": "object",
            "description": "files put in the work dir first: path -> text, or {base64: ...}",
            "additionalProperties": {
                "oneOf": [
                    {"type": "string"},
                    {
                        "type": "object",
                        "properties": {"base64": {"type": "string"}},
                        "required": ["base64"],
                        "additionalProperties": False,
                    },
                ]
            },
        },
        "outputs": {
            "type": "array",
            "description": "files (paths relative to the work dir) returned after the run",
            "items": {"type": "string", "minLength": 1},
            "uniqueItems": True,
            "maxItems": 64,
        },
        "fail_on_error": {
            "type": "boolean",
            "description": "false: a failed run (exit code, timeout, limit) returns its "
            "output instead of failing the step",
        },
        **_LIMIT_PARAMS,
    },
    "required": ["code"],
    "not": {"required": ["input", "stdin"]},
}


def resolve_limits(
    params: dict[str, Any], settings: SandboxSettings, ceiling_s: float | None = None
) -> tuple[Limits, list[str]]:
    """The step's limits: its params, else the operator's defaults, never above the maxima.

    ``ceiling_s`` (what the step's own activity timeout leaves) caps the wall-clock timeout.
    """
    notes: list[str] = []
    values: dict[str, Any] = {}
    for name in _LIMIT_PARAMS:
        maximum = getattr(settings, f"max_{name}")
        value = params.get(name, getattr(settings, name))
        if value is None:  # cpu_s defaults to the timeout
            value = min(math.ceil(values["timeout_s"]), maximum)
        if value > maximum:
            raise ToolError(
                f"{name}={value} is above the operator's maximum of {maximum} "
                f"(PLANSMITH_SANDBOX_MAX_{name.upper()})",
                retryable=False,
                kind="InvalidParams",
            )
        values[name] = value
    if ceiling_s is not None and values["timeout_s"] > ceiling_s:
        values["timeout_s"] = max(round(ceiling_s, 3), 0.1)
        notes.append(
            f"timeout_s lowered to {values['timeout_s']:g} s to end before the step's own timeout"
        )
    return Limits(**values), notes


def request_from_params(
    params: dict[str, Any], settings: SandboxSettings, ceiling_s: float | None = None
) -> tuple[SandboxRequest, list[str]]:
    def bad(message: str) -> ToolError:
        return ToolError(message, retryable=False, kind="InvalidParams")

    limits, notes = resolve_limits(params, settings, ceiling_s)
    if "input" in params and "stdin" in params:
        raise bad("give either input or stdin, not both")
    if "input" in params:
        stdin = json.dumps(params["input"]).encode()
    else:
        stdin = str(params.get("stdin", "")).encode()
    files: dict[str, bytes] = {}
    for path, value in (params.get("files") or {}).items():
        _check_path(path, "files", bad)
        if isinstance(value, dict):
            try:
                files[path] = base64.b64decode(value["base64"], validate=True)
            except (binascii.Error, ValueError) as e:
                raise bad(f"files[{path!r}].base64 is not valid base64: {e}") from None
        else:
            files[path] = str(value).encode()
    outputs = list(params.get("outputs") or [])
    for path in outputs:
        _check_path(path, "outputs", bad)
    code = params["code"]
    size = len(code.encode()) + len(stdin) + sum(len(v) for v in files.values())
    if size > settings.max_input_bytes:
        raise bad(
            f"code, stdin and files are {size} bytes, above the operator's maximum of "
            f"{settings.max_input_bytes} (PLANSMITH_SANDBOX_MAX_INPUT_BYTES)"
        )
    return (
        SandboxRequest(code=code, stdin=stdin, files=files, outputs=outputs, limits=limits),
        notes,
    )


def _check_path(path: str, where: str, bad: Callable[[str], ToolError]) -> None:
    parts = path.split("/")
    if len(path) > 255 or any(p in ("", ".", "..") or not _PATH_CHARS.match(p) for p in parts):
        raise bad(
            f"{where}: {path!r} is not a plain relative path inside the work dir "
            "(no leading '/', no '.' or '..' parts, letters, digits and ._@+=,- only)"
        )


async def run_in_thread(
    request: SandboxRequest,
    settings: SandboxSettings | None = None,
    heartbeat: Callable[..., None] = lambda *a: None,
) -> SandboxResult:
    """Run the sandbox in a thread of its own, heartbeating; a cancel kills the sandbox."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[SandboxResult] = loop.create_future()
    cancel = threading.Event()

    def settle(result: SandboxResult | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result = run_sandboxed(request, settings, cancel)
        except BaseException as e:
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, name="plansmith-sandbox", daemon=True).start()
    try:
        while True:
            finished, _ = await asyncio.wait({done}, timeout=HEARTBEAT_EVERY_S)
            if finished:
                return done.result()
            heartbeat()
    except asyncio.CancelledError:
        cancel.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait({done}, timeout=KILL_GRACE_S + 5)
        raise


def run_record(
    request: SandboxRequest | None,
    result: SandboxResult | None,
    *,
    ctx: ToolContext | None = None,
    refused: str | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The audit record of one run: what ran, under which limits, and how it ended."""
    code = request.code if request is not None else ""
    record: dict[str, Any] = {
        "tool": TOOL_NAME,
        "plan_id": ctx.plan_id if ctx else None,
        "step_id": ctx.step_id if ctx else None,
        "attempt": ctx.attempt if ctx else None,
        "code_sha256": hashlib.sha256(code.encode()).hexdigest(),
        "code_bytes": len(code.encode()),
        "limits": request.limits.model_dump() if request is not None else None,
    }
    if result is None:
        record.update(outcome="refused", reason=refused or "not run")
    else:
        record.update(
            outcome=result.outcome,
            reason=result.reason,
            exit_code=result.exit_code,
            signal=result.signal,
            duration_s=result.duration_s,
            peak_memory_bytes=result.peak_memory_bytes,
            cpu_s=result.cpu_s,
            stdout_bytes=result.stdout_bytes,
            stderr_bytes=result.stderr_bytes,
            files_in=sorted(request.files) if request is not None else [],
            files_out=sorted(result.files),
            left_behind=result.left_behind,
            isolation=result.isolation,
            python=result.python,
        )
    if notes:
        record["notes"] = list(notes)
    who = f"step {record['step_id']}" if record["step_id"] else "sandbox run"
    if result is None:
        record["summary"] = f"{who}: refused to run code {record['code_sha256'][:12]}: {refused}"
    else:
        peak = (
            f", peak memory {result.peak_memory_bytes / MB:.1f} MB"
            if result.peak_memory_bytes
            else ""
        )
        lim = result.limits
        record["summary"] = (
            f"{who}: ran code sha256 {record['code_sha256'][:12]} -> {result.outcome} "
            f"({result.reason}) in {result.duration_s:.2f} s{peak}; limits: "
            f"{lim.timeout_s:g} s wall, {lim.cpu_s} s CPU, {lim.memory_mb} MB memory, "
            f"{lim.file_size_mb} MB per file, {lim.disk_mb} MB disk, {lim.processes} processes, "
            f"{lim.open_files} open files"
        )
    return record


def _log_record(record: dict[str, Any]) -> None:
    level = logging.INFO if record.get("outcome") == "ok" else logging.WARNING
    log.log(
        level, "sandbox_run %s", json.dumps(record, sort_keys=True), extra={"sandbox_run": record}
    )


def _output(result: SandboxResult, record: dict[str, Any]) -> dict[str, Any]:
    files: dict[str, Any] = {}
    for path, data in result.files.items():
        try:
            files[path] = {"encoding": "utf-8", "content": data.decode("utf-8"), "size": len(data)}
        except UnicodeDecodeError:
            files[path] = {
                "encoding": "base64",
                "content": base64.b64encode(data).decode(),
                "size": len(data),
            }
    parsed: Any = None
    if result.stdout.strip() and not result.stdout_truncated:
        with contextlib.suppress(ValueError):
            parsed = json.loads(result.stdout)
    return {
        "ok": result.ok,
        "exit_code": result.exit_code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "json": parsed,
        "files": files,
        "sandbox": record,
    }


_FAILURE_KIND: dict[str, str] = {
    "timeout": "CodeTimeout",
    "cancelled": "CodeCancelled",
    "output_error": "CodeOutputError",
    "error": "CodeFailed",
    "killed": "CodeFailed",
    "no_network": "CodeFailed",
    "read_only": "CodeFailed",
    "denied": "CodeFailed",
}


def _step_ceiling_s() -> float | None:
    """What the step's activity timeout leaves for the code (minus a margin to report)."""
    if not activity.in_activity():
        return None
    total = activity.info().start_to_close_timeout
    if total is None:
        return None
    seconds = total.total_seconds()
    return max(seconds - min(2.0, seconds / 5), 0.1)


@tool(
    name=TOOL_NAME,
    description=(
        "Run Python 3 code in the sandbox (no network, no secrets, read-only system, "
        "resource limits) and return {ok, exit_code, stdout, stderr, json, files, sandbox}. "
        "`input` goes to stdin as JSON; `files` are written to the work dir first; "
        "`outputs` lists the files to bring back. A failed run fails the step unless "
        "fail_on_error is false."
    ),
    params_schema=PARAMS_SCHEMA,
    risk="medium",
    idempotent=True,
    activity=RUN_CODE,
    task_queue=SANDBOX_QUEUE,
)
async def python_tool(params: dict[str, Any], ctx: ToolContext) -> Any:
    s = get_sandbox_settings()
    request, notes = request_from_params(params, s, _step_ceiling_s())
    try:
        result = await run_in_thread(request, s, ctx.heartbeat)
    except SandboxUnavailable as e:
        refused = run_record(request, None, ctx=ctx, refused=str(e), notes=notes)
        _log_record(refused)
        raise SandboxFailed(str(e), kind=e.kind, record=refused) from None
    record = run_record(request, result, ctx=ctx, notes=notes)
    _log_record(record)
    if result.ok or params.get("fail_on_error", True) is False:
        return _output(result, record)
    message = result.reason
    tail = result.stderr.strip()[-600:]
    if tail and result.outcome != "output_error":
        message += f"\nstderr (end):\n{tail}"
    kind = _FAILURE_KIND.get(result.outcome, "SandboxLimit")
    raise SandboxFailed(message, kind=kind, record=record)


# --- the activity ---------------------------------------------------------------------


@activity.defn(name=RUN_CODE)
async def run_code(task: StepTask) -> StepOutcome:
    """Run a ``python`` step in the sandbox (hosted by the ``sandbox`` worker pool).

    Same contract as ``execute_step``: the params are checked again against the tool's
    schema, failures become ``ApplicationError`` carrying the attempt number, and the run
    record travels in the output (``output.sandbox``) or in the error details
    (``details[0]["sandbox"]``).
    """
    attempt = activity.info().attempt
    try:
        registered = get_tool(task.tool or "")
        if registered.spec.activity != RUN_CODE:
            raise ToolError(
                f"tool {registered.spec.name!r} does not run in the sandbox",
                retryable=False,
                kind="UnknownTool",
            )
        output = await run_tool(task, attempt)
    except SandboxFailed as e:
        raise ApplicationError(
            str(e), {"attempt": attempt, "sandbox": e.record}, type=e.kind, non_retryable=True
        ) from None
    except ToolError as e:
        raise ApplicationError(
            str(e), {"attempt": attempt}, type=e.kind, non_retryable=not e.retryable
        ) from None
    except (ApplicationError, asyncio.CancelledError):
        raise
    except Exception as e:
        raise ApplicationError(
            f"{type(e).__name__}: {e}", {"attempt": attempt}, type="SandboxError"
        ) from e
    return StepOutcome(output=output, attempt=attempt)
