"""The audit record of one sandbox run, and its log line (logger ``plansmith.sandbox``)."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from activities.sandbox.models import MB, SandboxRequest, SandboxResult
from activities.tools import ToolContext
from contracts.tools import PYTHON_TOOL

log = logging.getLogger("plansmith.sandbox")


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
        "tool": PYTHON_TOOL,
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


def log_record(record: dict[str, Any]) -> None:
    level = logging.INFO if record.get("outcome") == "ok" else logging.WARNING
    log.log(
        level, "sandbox_run %s", json.dumps(record, sort_keys=True), extra={"sandbox_run": record}
    )
