"""How a run ended: the runner's report and the captured output become a ``SandboxResult``.

A kill by the supervisor (timeout, cancellation, output flood, a whole-sandbox limit) wins; otherwise the exit
status, the signal and the last line of stderr tell which limit the code hit, if any.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import signal
from typing import TYPE_CHECKING, Any

from activities.sandbox.models import Limits, Outcome, SandboxRequest, SandboxResult
from activities.tools import ToolError

if TYPE_CHECKING:
    from activities.sandbox.probe import Isolation
    from activities.sandbox.supervise import Capture


def sandbox_result(
    request: SandboxRequest,
    iso: Isolation,
    out: Capture,
    err: Capture,
    report_capture: Capture,
    killed: tuple[Outcome, str] | None,
    outer_returncode: int,
    duration: float,
    watched_peak: int = 0,
) -> SandboxResult:
    """The result of one run, from what the supervisor captured and why it killed, if it did.

    Raises:
        ToolError: the runner never started (retryable): the sandbox itself failed.
    """
    limits = request.limits
    lines = bytes(report_capture.data).split(b"\n")
    started = lines[0] == b"started"
    sampled_peak = watched_peak
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
        "memory limit of {memory_mb} MB (address space of one process) reached",
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
