"""What isolation this worker can build: bubblewrap, or none if the operator says so.

The probe runs the interpreter once inside a bare sandbox; when bwrap is missing or the
kernel refuses the namespaces it raises ``SandboxUnavailable`` (unless the operator opted
out with ``PLANSMITH_SANDBOX_ISOLATION=none``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any, Literal

from activities.sandbox.bwrap import bwrap_base
from activities.sandbox.models import SandboxUnavailable
from activities.sandbox.syscalls import seccomp_bpf
from activities.sandbox.watch import MECHANISM
from config import SandboxSettings


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


def isolation(settings: SandboxSettings) -> Isolation:
    """What this worker can build, probed once (a refusal is probed again next time).

    Raises:
        SandboxUnavailable: bwrap is missing or cannot create the namespaces here, and
            the operator did not opt out with ``PLANSMITH_SANDBOX_ISOLATION=none``.
    """
    s = settings
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
    seccomp_bpf()  # raises SandboxUnavailable when the filter cannot be built
    errors = []
    for python, prefix in _python_candidates(s):
        argv = [
            *bwrap_base(bwrap, prefix, s.disk_mb),
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
                **user_kwargs(s, switch),
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
                    f"read-only /usr; tmpfs work dir, /tmp and /dev/shm; seccomp filter; "
                    f"memory and processes limited for the whole sandbox ({MECHANISM}); "
                    f"runs as {who}"
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
                **user_kwargs(s, switch),
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


def user_kwargs(s: SandboxSettings, switch: bool) -> dict[str, Any]:
    return {"user": s.uid, "group": s.gid, "extra_groups": []} if switch else {}
