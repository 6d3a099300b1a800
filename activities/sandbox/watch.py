"""The whole-sandbox limits: memory (processes and tmpfs together) and process count.

``RLIMIT_AS`` bounds each process, not the sandbox: six children of 200 MB each stay under
a 256 MB address space apiece. The supervisor therefore watches the sandbox as a whole
from the worker, out of the code's reach, every ``SAMPLE_EVERY_S``:

- **memory**: the proportional set size (PSS: private pages, shared ones split between
  their sharers, so forked children are not counted twice) of the anonymous and shared
  memory of every process of the sandbox but its PID 1 and the runner (resident anon +
  shmem from ``/proc/<pid>/status`` where ``smaps_rollup`` is not readable), plus the
  bytes used in its tmpfs mounts (the work dir, ``/tmp``, ``/dev/shm``; the runner hands
  their directories over before the code starts). Above ``memory_mb`` the sandbox is
  killed. The sandbox cannot create memory this misses: ``memfd_create`` and SysV shared
  memory are refused by its seccomp filter.
- **processes**: the kernel refuses a fork past ``processes`` (``RLIMIT_NPROC``, counted
  in the sandbox's own user namespace, so for all its processes and threads together);
  code that sits at that cap for ``PROCESS_CAP_GRACE_S`` (a fork bomb that ignores the
  refusals) is killed.
"""

from __future__ import annotations

import contextlib
import os

from activities.sandbox.models import MB, Limits, Outcome

SAMPLE_EVERY_S = 0.05
PROCESS_CAP_GRACE_S = 1.0
MECHANISM = "the worker's supervisor: PSS of all the sandbox's processes plus its tmpfs"


class SandboxWatch:
    """Samples one sandbox; ``check()`` says why it must be killed, if it must."""

    def __init__(self, root_pid: int, limits: Limits, namespaced: bool):
        self.root_pid = root_pid
        self.limits = limits
        # bwrap: skip the sandbox's PID 1 and the runner (PIDs 1 and 2 of its namespace).
        self.namespaced = namespaced
        self.mount_fds: list[int] = []
        self.peak_process_bytes = 0
        self.peak_total_bytes = 0
        self.peak_tasks = 0
        self.at_cap_since: float | None = None
        self.last = 0.0

    def close(self) -> None:
        for fd in self.mount_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.mount_fds = []

    def check(self, now: float, final: bool = False) -> tuple[Outcome, str] | None:
        """The limit the sandbox is over, if any (sampled every SAMPLE_EVERY_S);
        ``final``: the code has ended, only what it left behind is measured."""
        if now - self.last < SAMPLE_EVERY_S:
            return None
        self.last = now
        memory, tasks = self._processes()
        disk = self._tmpfs_used()
        total = memory + disk
        self.peak_process_bytes = max(self.peak_process_bytes, memory)
        self.peak_total_bytes = max(self.peak_total_bytes, total)
        self.peak_tasks = max(self.peak_tasks, tasks)
        limit = self.limits.memory_mb * MB
        if total > limit:
            what = (
                "the sandbox was discarded with its files"
                if final
                else "the sandbox and every process in it were killed"
            )
            when = " when the code ended" if final else ""
            return (
                "memory_limit",
                f"memory limit of {self.limits.memory_mb} MB for the whole sandbox exceeded"
                f"{when}: its processes held {memory / MB:.0f} MB and its tmpfs files "
                f"{disk / MB:.0f} MB ({MECHANISM}); {what}",
            )
        if tasks >= self.limits.processes:
            self.at_cap_since = self.at_cap_since or now
            if now - self.at_cap_since >= PROCESS_CAP_GRACE_S:
                return (
                    "process_limit",
                    f"process limit of {self.limits.processes} processes/threads for the "
                    f"whole sandbox reached and held for {PROCESS_CAP_GRACE_S:g} s (forks "
                    "refused by RLIMIT_NPROC in the sandbox's user namespace); the sandbox "
                    "and every process in it were killed",
                )
        else:
            self.at_cap_since = None
        return None

    def _processes(self) -> tuple[int, int]:
        """Memory (bytes) and tasks (threads) of the code's processes."""
        memory = tasks = 0
        for pid in _descendants(self.root_pid):
            status = _status(pid)
            if status is None:
                continue
            if self.namespaced and status.get("NSpid", "").split()[-1:] in (["1"], ["2"]):
                continue
            tasks += _int(status.get("Threads"), 1)
            pss = _pss(pid)
            if pss is None:
                pss = (_kb(status.get("RssAnon")) + _kb(status.get("RssShmem"))) * 1024
            memory += pss
        return memory, tasks

    def _tmpfs_used(self) -> int:
        used = 0
        for fd in self.mount_fds:
            with contextlib.suppress(OSError):
                st = os.fstatvfs(fd)
                used += (st.f_blocks - st.f_bfree) * st.f_frsize
        return used


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (not ``root`` itself), from /proc's children lists."""
    found: list[int] = []
    todo = [root]
    seen = {root}
    while todo:
        pid = todo.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    kids = f.read().split()
            except OSError:
                continue
            for kid in kids:
                k = int(kid)
                if k not in seen:
                    seen.add(k)
                    found.append(k)
                    todo.append(k)
    return found


def _status(pid: int) -> dict[str, str] | None:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _pss(pid: int) -> int | None:
    """Proportional anonymous + shmem memory, or None where /proc does not show it."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    total = 0
    found = False
    for line in text.splitlines():
        if line.startswith(("Pss_Anon:", "Pss_Shmem:")):
            total += _kb(line.split(":", 1)[1])
            found = True
    return total * 1024 if found else None


def _kb(value: str | None) -> int:
    """``"123 kB"`` -> 123."""
    parts = (value or "").split()
    return _int(parts[0], 0) if parts else 0


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
