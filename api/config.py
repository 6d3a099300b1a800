"""Settings of the API process that ``plansmith.settings.Settings`` does not (yet) hold.

Read from the environment once, when the app is built. Every value has a default; a
value that does not parse stops the start-up with the variable's name in the message.

| variable | default | meaning |
|---|---|---|
| ``PLANSMITH_CORS_ORIGINS`` | none (no CORS headers) | comma-separated origins allowed to call the API from a browser; ``*`` allows any |
| ``PLANSMITH_API_TIMEOUT_S`` | ``10`` | longest wait for one Temporal call (query, update, start) or database read; then 503 |
| ``PLANSMITH_API_CONNECT_TIMEOUT_S`` | ``5`` | longest wait to connect to Temporal |
| ``PLANSMITH_SSE_POLL_S`` | ``0.25`` | how often the server reads a watched plan's status for ``/events`` |
| ``PLANSMITH_SSE_LINGER_S`` | ``60`` | how long a plan's event journal is kept after its last watcher left, so a reconnect resumes exactly |
| ``PLANSMITH_LOG_FORMAT`` | ``json`` | ``json`` (one object a line) or ``text`` |
| ``PLANSMITH_LOG_LEVEL`` | ``INFO`` | level of the API's own logs |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.001) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


@dataclass(frozen=True)
class ApiConfig:
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    rpc_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    sse_poll_s: float = 0.25
    sse_linger_s: float = 60.0
    sse_ping_s: float = 15.0
    sse_give_up_s: float = 30.0
    sse_retry_ms: int = 2000
    json_logs: bool = True
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiConfig:
        e = os.environ if env is None else env
        origins = tuple(
            o.strip() for o in e.get("PLANSMITH_CORS_ORIGINS", "").split(",") if o.strip()
        )
        fmt = e.get("PLANSMITH_LOG_FORMAT", "json").strip().lower() or "json"
        if fmt not in ("json", "text"):
            raise ValueError(f"PLANSMITH_LOG_FORMAT={fmt!r} must be 'json' or 'text'")
        return cls(
            cors_origins=origins,
            rpc_timeout_s=_float(e, "PLANSMITH_API_TIMEOUT_S", 10.0),
            connect_timeout_s=_float(e, "PLANSMITH_API_CONNECT_TIMEOUT_S", 5.0),
            sse_poll_s=_float(e, "PLANSMITH_SSE_POLL_S", 0.25, minimum=0.01),
            sse_linger_s=_float(e, "PLANSMITH_SSE_LINGER_S", 60.0, minimum=0),
            json_logs=fmt == "json",
            log_level=e.get("PLANSMITH_LOG_LEVEL", "INFO").strip().upper() or "INFO",
        )
