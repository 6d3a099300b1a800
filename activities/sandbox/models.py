"""The sandbox's fixed names, its errors, and the request, limits and result models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from activities.tools import ToolError

WORKDIR = "/sandbox"
CODE_PATH = "/code/main.py"
KILL_GRACE_S = 3.0  # after a kill, how long to wait for the pipes to close
MB = 1024 * 1024

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
