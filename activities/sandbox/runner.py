# plansmith-sandbox-runner
"""The runner: the sandbox's first process, which starts the code and reports on it.

This file is never imported by the worker: its source is passed to the sandbox's own
interpreter with ``python -I -B -c <source> <report fd> [<mounts fd>]`` (see
``activities.sandbox.run``),
so it uses the standard library only and must run on any Python 3.9+. The first line
marks the runner's command line, so a leftover sandbox process can be recognised.

It applies the rlimits to itself, so the code inherits them and cannot raise them, makes
itself non-dumpable so the code can neither ptrace it nor write to its report pipe through
/proc, and reports on a pipe the code does not inherit:

- the job (JSON) arrives on stdin: the work dir, the files to put in it, the code's stdin,
  the rlimits, the command line, the environment, the output files to bring back and the
  tmpfs mounts whose directories it hands to the worker (on the mounts fd, before the
  code starts), so the worker counts what the code stores there as its memory;
- it runs under the sandbox's seccomp filter already (no ``memfd_create``: the code's
  stdin is an unnamed file in its ``/tmp``);
- on the report fd it writes ``started``, then ``peak <bytes>`` lines as the code's
  resident memory grows, then one JSON line: the exit status, resource usage, the
  processes left behind and the declared output files (base64) or what is wrong with them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import socket
import stat
import subprocess
import sys
import tempfile
import time
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def inside(work: str, rel: str) -> str:
    path = os.path.realpath(os.path.join(work, rel))
    if not path.startswith(work.rstrip("/") + "/"):
        raise ValueError("outside the work dir")
    return path


def rss(everyone: bool, pid: int) -> int:
    """Resident memory of the code's processes.

    Every process of the sandbox's own PID namespace but PID 1 and the runner, else only
    the code's first process.
    """
    me = os.getpid()
    if everyone:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]
    else:
        pids = [str(pid)]
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total


def collect_outputs(job: dict[str, Any], work: str) -> tuple[dict[str, str], dict[str, str]]:
    """The declared output files (base64), within the per-file and total byte limits."""
    files: dict[str, str] = {}
    problems: dict[str, str] = {}
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
            problems[rel] = (
                f"{st.st_size} bytes, above the limit of {job['max_file_bytes']} bytes "
                "per output file"
            )
        elif st.st_size > budget:
            problems[rel] = (
                f"{st.st_size} bytes, above what is left of the {job['max_files_bytes']} "
                "bytes for all output files"
            )
        else:
            with open(path, "rb") as f:
                data = f.read(job["max_file_bytes"] + 1)
            if len(data) > min(job["max_file_bytes"], budget):
                problems[rel] = "grew above the output file limit while being read"
            else:
                budget -= len(data)
                files[rel] = base64.b64encode(data).decode()
    return files, problems


def main() -> None:
    out = int(sys.argv[1])
    write_all(out, b"started\n")
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
    job = json.loads(sys.stdin.buffer.read())
    work = job["workdir"]
    for rel, data in job["files"].items():
        path = inside(work, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
    if len(sys.argv) > 2:
        mounts = socket.socket(fileno=int(sys.argv[2]))
        fds = [os.open(m, os.O_RDONLY | os.O_DIRECTORY) for m in job.get("mounts", [])]
        if fds:
            socket.send_fds(mounts, [b"m"], fds)
        for fd in fds:
            os.close(fd)
        mounts.close()
    with tempfile.TemporaryFile(dir=job["env"]["TMPDIR"]) as f:
        stdin = os.dup(f.fileno())
    write_all(stdin, base64.b64decode(job["stdin"]))
    os.lseek(stdin, 0, 0)
    if job["nice"]:
        os.nice(job["nice"])
    for name, soft, hard in job["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    report: dict[str, Any] = {"returncode": None}
    try:
        child = subprocess.Popen(job["argv"], stdin=stdin, cwd=work, env=job["env"], close_fds=True)
    except OSError as e:
        report["spawn_error"] = f"{type(e).__name__}: {e}"
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
    report["files"], report["file_problems"] = collect_outputs(job, work)
    write_all(out, json.dumps(report).encode())


if __name__ == "__main__":
    main()
