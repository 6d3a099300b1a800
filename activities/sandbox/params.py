"""The ``python`` tool's params: their schema, the step's limits and the sandbox request.

Each limit comes from the step's params, else the operator's default, and is never above
the operator's maximum (``PLANSMITH_SANDBOX_MAX_*``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from typing import Any

from activities.sandbox.models import Limits, SandboxRequest
from activities.tools import ToolError
from config import SandboxSettings
from contracts.tools import LIMIT_PARAMS

_PATH_CHARS = re.compile(r"^[A-Za-z0-9._@+=,-]+$")


def resolve_limits(
    params: dict[str, Any], settings: SandboxSettings, ceiling_s: float | None = None
) -> tuple[Limits, list[str]]:
    """The step's limits: its params, else the operator's defaults, never above the maxima.

    ``ceiling_s`` (what the step's own activity timeout leaves) caps the wall-clock timeout.
    """
    notes: list[str] = []
    values: dict[str, Any] = {}
    for name in LIMIT_PARAMS:
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
