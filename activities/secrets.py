"""Secrets on the worker: where their values come from, resolving ``{{ secrets.NAME }}``
in a step's params right before the tool runs, and redacting the values from all that
leaves the activity.

Values come from the worker's environment (``PLANSMITH_SECRET_<NAME>``) and from the
file ``PLANSMITH_SECRETS_FILE`` names (a JSON object, or ``NAME=value`` lines), read
anew when it changes. The workflow hands the activity only the references and where the
plan's own params hold them (``StepTask.secret_params``); :func:`with_secrets` puts the
values in a copy of the params that lives only in this activity, runs the tool, and
redacts every value it resolved (also URL- and JSON-escaped, and base64) as ``***`` from the output
and from any error, before either goes back to Temporal. The same redaction hides
credentials in URLs (user:password@, ``?token=`` and the like) in error messages.

``check_secrets`` (:class:`SecretActivities`) tells a starting plan which of the names it
uses this worker does not have, so an unknown secret stops the plan before a step runs.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.deps import ActivityDeps
from activities.tools import ToolError
from config import Settings
from contracts.secrets import CHECK_SECRETS, SecretCheck
from contracts.steps import StepTask
from plans.expressions import SECRET_REF_RE
from plans.models import StepKind
from plans.secrets import NAME_RE, REDACTED, location

ENV_PREFIX = "PLANSMITH_SECRET_"
log = logging.getLogger("plansmith.secrets")


class SecretsFileError(ValueError):
    """The secrets file cannot be read or parsed (the message never holds a value)."""


# --- where the values come from ------------------------------------------------------

_file_cache: dict[str, tuple[tuple[int, int], dict[str, str]]] = {}
_file_lock = threading.Lock()


def _parse_file(text: str, path: str) -> dict[str, str]:
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise SecretsFileError(
                f"PLANSMITH_SECRETS_FILE {path}: not valid JSON at line {e.lineno}"
            ) from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise SecretsFileError(
                f"PLANSMITH_SECRETS_FILE {path}: a JSON secrets file is an object of strings"
            )
        pairs = list(data.items())
    else:
        pairs = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, value = line.partition("=")
            if not sep:
                raise SecretsFileError(
                    f"PLANSMITH_SECRETS_FILE {path}, line {n}: expected NAME=value"
                )
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            pairs.append((name.strip(), value))
    for name, _ in pairs:
        if not NAME_RE.match(name):
            raise SecretsFileError(
                f"PLANSMITH_SECRETS_FILE {path}: {name!r} is not a secret name "
                "(letters, digits and _, not starting with a digit)"
            )
    return dict(pairs)


def _read_file(path: str) -> dict[str, str]:
    try:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size)
        with _file_lock:
            cached = _file_cache.get(path)
            if cached and cached[0] == stamp:
                return cached[1]
        values = _parse_file(Path(path).read_text(encoding="utf-8"), path)
    except OSError as e:
        raise SecretsFileError(
            f"PLANSMITH_SECRETS_FILE {path}: cannot read it: {e.strerror or e}"
        ) from None
    with _file_lock:
        _file_cache[path] = (stamp, values)
    return values


def load_secrets(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every secret this worker has, by name: the file's, then the environment's."""
    env = os.environ if environ is None else environ
    values = dict(_read_file(settings.secrets.file)) if settings.secrets.file else {}
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and NAME_RE.match(key[len(ENV_PREFIX) :]):
            values[key[len(ENV_PREFIX) :]] = value
    return values


# --- redaction ------------------------------------------------------------------------

_USERINFO_RE = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#@\s'\"]+@")
_CREDENTIAL_PARAM_RE = re.compile(
    r"([?&;](?:[^=&#\s'\"]*(?:token|key|secret|password|passwd|signature|credential|auth)"
    r"[^=&#\s'\"]*|sig)=)[^&#\s'\"]*",
    re.IGNORECASE,
)


def redact_url_credentials(text: str) -> str:
    """``https://user:pw@host/x?token=abc&page=2`` -> ``https://***@host/x?token=***&page=2``."""
    return _CREDENTIAL_PARAM_RE.sub(rf"\1{REDACTED}", _USERINFO_RE.sub(rf"\1{REDACTED}@", text))


def _forms(values: Iterable[str]) -> list[str]:
    """Each value as it may appear in text: plain, URL-encoded, JSON-escaped and
    base64 (standard and URL-safe, padded or not: a service that echoes the value
    encoded); longest first so a longer form is replaced before a shorter one inside it.
    A value encoded together with other text (``base64("user:" + value)``), or
    transformed otherwise (reversed, split), is not recognized."""
    forms: set[str] = set()
    for v in values:
        if not v:
            continue
        forms |= {v, quote(v, safe=""), quote_plus(v), json.dumps(v)[1:-1]}
        for b64 in (base64.b64encode(v.encode()), base64.urlsafe_b64encode(v.encode())):
            forms |= {b64.decode(), b64.decode().rstrip("=")}
    return sorted(forms, key=len, reverse=True)


class Redactor:
    """Replaces each of some secret values (and their escaped forms) with ``***``."""

    def __init__(self, values: Iterable[str]):
        forms = _forms(values)
        self._re = re.compile("|".join(map(re.escape, forms))) if forms else None

    def text(self, text: str) -> str:
        if self._re is not None:
            text = self._re.sub(REDACTED, text)
        return redact_url_credentials(text)

    def value(self, value: Any) -> Any:
        """``value`` with every string in it (keys too) redacted."""
        if self._re is None:
            return value
        if isinstance(value, str):
            return self._re.sub(REDACTED, value)
        if isinstance(value, dict):
            return {
                (self.value(k) if isinstance(k, str) else k): self.value(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value

    def error(self, e: BaseException) -> Exception:
        """An error like ``e`` whose message (and details) are redacted; raise it ``from
        None`` so the original (with the value) does not travel as its cause."""
        if isinstance(e, ToolError):
            return ToolError(self.text(str(e)), retryable=e.retryable, kind=e.kind)
        if isinstance(e, ApplicationError):
            return ApplicationError(
                self.text(e.message),
                *(self.value(d) for d in e.details),
                type=e.type,
                non_retryable=e.non_retryable,
            )
        return ToolError(self.text(f"{type(e).__name__}: {e}"), retryable=True, kind="StepError")


# --- resolving --------------------------------------------------------------------------


def _resolve_at(
    params: Any, path: list[str | int], values: Mapping[str, str], used: dict[str, str]
) -> Any:
    if not path:
        if not isinstance(params, str):
            return params  # the plan's string was replaced meanwhile: nothing to resolve

        def value_of(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in values:
                raise KeyError(name)
            used[name] = values[name]
            return values[name]

        return SECRET_REF_RE.sub(value_of, params)
    head, rest = path[0], path[1:]
    if isinstance(params, dict) and isinstance(head, str) and head in params:
        return {**params, head: _resolve_at(params[head], rest, values, used)}
    if isinstance(params, list) and isinstance(head, int) and 0 <= head < len(params):
        copy = list(params)
        copy[head] = _resolve_at(params[head], rest, values, used)
        return copy
    return params


def resolve(
    params: dict[str, Any], paths: list[list[str | int]], values: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """A copy of ``params`` with the references at ``paths`` replaced by their values,
    and the values used by name; an unknown name is a non-retryable ``UnknownSecret``."""
    used: dict[str, str] = {}
    out: Any = params
    for path in paths:
        try:
            out = _resolve_at(out, path, values, used)
        except KeyError as e:
            raise ToolError(
                f"{location(path)}: unknown secret {e.args[0]} (this worker has no "
                f"{ENV_PREFIX}{e.args[0]} and no such name in PLANSMITH_SECRETS_FILE)",
                retryable=False,
                kind="UnknownSecret",
            ) from None
    return out, used


async def with_secrets(
    task: StepTask, settings: Settings, run: Callable[[StepTask], Awaitable[Any]]
) -> Any:
    """``run(task)`` with the task's secret references resolved; its output, and the
    message of any error it raises, redacted of every value resolved and of credentials
    in URLs."""
    used: dict[str, str] = {}
    if task.secret_params:
        if task.kind != StepKind.TOOL:
            raise ToolError(
                "secrets may be used only in a tool step's params",
                retryable=False,
                kind="SecretNotAllowed",
            )
        try:
            values = load_secrets(settings)
        except SecretsFileError as e:
            raise ToolError(str(e), retryable=True, kind="SecretsUnavailable") from None
        params, used = resolve(task.params, task.secret_params, values)
        task = task.model_copy(update={"params": params})
    redactor = Redactor(used.values())
    try:
        output = await run(task)
    except (ToolError, ApplicationError) as e:
        if not used and redactor.text(str(e)) == str(e):
            raise
        raise redactor.error(e) from None
    except Exception as e:  # an unexpected error may print the params too
        if not used:
            raise
        raise redactor.error(e) from None
    return redactor.value(output)


# --- the start of a plan ----------------------------------------------------------------


class SecretActivities:
    """``check_secrets``: which of a plan's secret names this worker lacks."""

    def __init__(self, deps: ActivityDeps):
        self.deps = deps

    @activity.defn(name=CHECK_SECRETS)
    async def check_secrets(self, check: SecretCheck) -> list[str]:
        try:
            have = load_secrets(self.deps.settings)
        except SecretsFileError as e:
            raise ApplicationError(str(e), type="SecretsUnavailable") from None
        return sorted({n for n in check.names if n not in have})


# --- logs -------------------------------------------------------------------------------


class SecretLogFilter(logging.Filter):
    """Redacts the worker's secret values (and URL credentials) from log records that
    pass through the handler it is attached to."""

    def __init__(self, settings: Settings):
        super().__init__()
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            values = load_secrets(self.settings)
        except SecretsFileError:
            values = {}
        redactor = Redactor(values.values())
        message = record.getMessage()
        clean = redactor.text(message)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redactor.text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if clean != message:
            record.msg, record.args = clean, None
        return True


def redact_logs(settings: Settings) -> None:
    """Attach :class:`SecretLogFilter` to every handler of the root logger, and say which
    secrets (names only) this worker has, or why its file cannot be read."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SecretLogFilter) for f in handler.filters):
            handler.addFilter(SecretLogFilter(settings))
    try:
        names = sorted(load_secrets(settings))
    except SecretsFileError as e:
        log.error("secrets unavailable, plans that use them will fail: %s", e)
        return
    log.info("secrets available to plans: %s", ", ".join(names) if names else "none")
