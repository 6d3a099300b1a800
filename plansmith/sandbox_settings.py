"""Settings of the code sandbox (the ``python`` tool), read from ``PLANSMITH_SANDBOX_*``.

They are operator settings: a plan step may ask for other limits with its params, but
never for more than the maxima here. The one switch that weakens the sandbox,
``PLANSMITH_SANDBOX_ISOLATION=none``, must be set on purpose; without it a worker that
cannot build the isolation refuses to run code (see docs/sandbox.md).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SandboxSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PLANSMITH_SANDBOX_", env_file=".env", extra="ignore"
    )

    task_queue: str = Field(
        default="sandbox", description="the task queue the sandbox worker pool polls"
    )
    isolation: Literal["bwrap", "none"] = Field(
        default="bwrap",
        description="bwrap: namespaces through bubblewrap, refuse to run when unavailable; "
        "none: the operator's explicit opt-out (a limited child process only, no namespaces)",
    )
    bwrap: str = Field(default="bwrap", description="the bubblewrap binary (name or path)")
    python: str | None = Field(
        default=None,
        description="interpreter that runs the code; default: the worker's own base interpreter "
        "when the sandbox user can reach it, else /usr/bin/python3 or /usr/local/bin/python3",
    )
    uid: int = Field(
        default=65534, ge=1, description="unprivileged uid the code runs as when the worker is root"
    )
    gid: int = Field(default=65534, ge=1, description="its gid")
    nice: int = Field(default=10, ge=0, le=19, description="niceness of the code (worker first)")
    max_concurrent_runs: int = Field(
        default=4, ge=1, description="sandbox runs a worker hosts at once"
    )

    # Defaults for a step that does not ask, and the maxima a step may ask for.
    timeout_s: float = Field(default=30, gt=0)
    max_timeout_s: float = Field(default=300, gt=0)
    cpu_s: int | None = Field(default=None, ge=1, description="default: the timeout, rounded up")
    max_cpu_s: int = Field(default=300, ge=1)
    memory_mb: int = Field(default=512, ge=32, description="address space (RLIMIT_AS)")
    max_memory_mb: int = Field(default=2048, ge=32)
    file_size_mb: int = Field(default=16, ge=1, description="largest file written (RLIMIT_FSIZE)")
    max_file_size_mb: int = Field(default=256, ge=1)
    disk_mb: int = Field(
        default=64, ge=1, description="size of each tmpfs: the work dir, /tmp and /dev/shm"
    )
    max_disk_mb: int = Field(default=1024, ge=1)
    processes: int = Field(default=32, ge=1, description="processes and threads (RLIMIT_NPROC)")
    max_processes: int = Field(default=256, ge=1)
    open_files: int = Field(default=64, ge=16, description="open files (RLIMIT_NOFILE)")
    max_open_files: int = Field(default=1024, ge=16)

    # Operator-only bounds on what comes back (it lands in workflow history).
    max_stdout_bytes: int = Field(default=64 * 1024, ge=1024)
    max_stderr_bytes: int = Field(default=64 * 1024, ge=1024)
    max_output_file_bytes: int = Field(default=256 * 1024, ge=1)
    max_output_files_bytes: int = Field(default=1024 * 1024, ge=1)
    max_input_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="code + stdin + input files"
    )
    flood_factor: int = Field(
        default=64,
        ge=2,
        description="kill the run once stdout or stderr exceeds this many times its bound",
    )

    @model_validator(mode="after")
    def _defaults_within_maxima(self) -> SandboxSettings:
        pairs = [
            ("timeout_s", "max_timeout_s"),
            ("cpu_s", "max_cpu_s"),
            ("memory_mb", "max_memory_mb"),
            ("file_size_mb", "max_file_size_mb"),
            ("disk_mb", "max_disk_mb"),
            ("processes", "max_processes"),
            ("open_files", "max_open_files"),
        ]
        for default, maximum in pairs:
            value = getattr(self, default)
            if value is not None and value > getattr(self, maximum):
                raise ValueError(
                    f"PLANSMITH_SANDBOX_{default.upper()}={value} is above "
                    f"PLANSMITH_SANDBOX_{maximum.upper()}={getattr(self, maximum)}"
                )
        return self


@lru_cache
def get_sandbox_settings() -> SandboxSettings:
    return SandboxSettings()
