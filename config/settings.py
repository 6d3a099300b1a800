"""Every setting of Plansmith, read from the environment and ``.env``.

One :class:`Settings` with a section per concern. Each section is a pydantic-settings
class whose fields name their environment variable, so ``load_settings()`` validates the
whole configuration at start-up and a wrong value stops the process with the variable's
name in the message (:class:`ConfigError`). The variables and their defaults:

=================================  ===========================================================
section.field                      variable
=================================  ===========================================================
temporal.address                   ``TEMPORAL_ADDRESS`` (``localhost:7233``)
temporal.namespace                 ``TEMPORAL_NAMESPACE`` (``default``)
temporal.task_queue                ``PLANSMITH_TASK_QUEUE`` (``plans``)
temporal.db_file                   ``PLANSMITH_TEMPORAL_DB`` (``.plansmith/temporal.db``)
temporal.ui_url                    ``PLANSMITH_UI_URL``
temporal.heartbeat_timeout_s       ``PLANSMITH_HEARTBEAT_TIMEOUT_S`` (20)
temporal.max_concurrent_plans      ``PLANSMITH_MAX_CONCURRENT_PLANS`` (0 = no limit)
temporal.max_concurrent_plans_per_agent  ``PLANSMITH_MAX_CONCURRENT_PLANS_PER_AGENT`` (0)
temporal.limiter_check_s           ``PLANSMITH_LIMITER_CHECK_S`` (30)
temporal.worker_connect_wait_s     ``PLANSMITH_WORKER_CONNECT_WAIT_S`` (60)
temporal.worker_metrics_port       ``PLANSMITH_WORKER_METRICS_PORT`` (unset: no metrics endpoint)
temporal.worker_metrics_host       ``PLANSMITH_WORKER_METRICS_HOST`` (``127.0.0.1``)
temporal.tls*                      ``PLANSMITH_TEMPORAL_TLS``, ``..._TLS_CERT``, ``..._TLS_KEY``,
                                   ``..._TLS_CA``, ``..._TLS_SERVER_NAME``
temporal.payload_key*              ``PLANSMITH_PAYLOAD_KEY``, ``PLANSMITH_PAYLOAD_KEY_ID``,
                                   ``PLANSMITH_PAYLOAD_OLD_KEYS``
store.database_url                 ``DATABASE_URL`` (``sqlite:///plansmith.db``)
store.large_output_bytes           ``PLANSMITH_LARGE_OUTPUT_BYTES`` (262144)
store.connect_timeout_s            ``PLANSMITH_DB_CONNECT_TIMEOUT_S`` (5)
store.statement_timeout_s          ``PLANSMITH_DB_STATEMENT_TIMEOUT_S`` (30)
store.lock_timeout_s               ``PLANSMITH_DB_LOCK_TIMEOUT_S`` (10)
store.busy_timeout_s               ``PLANSMITH_DB_BUSY_TIMEOUT_S`` (30, SQLite)
store.pool_timeout_s               ``PLANSMITH_DB_POOL_TIMEOUT_S`` (5)
store.read_threads                 ``PLANSMITH_DB_READ_THREADS`` (8)
api.keys                           ``PLANSMITH_API_KEYS`` (``key:owner[:role]``, comma-separated)
api.allow_open_api                 ``PLANSMITH_ALLOW_OPEN_API`` (false)
api.allowed_hosts                  ``PLANSMITH_API_ALLOWED_HOSTS`` (loopback + the bound host)
api.cors_origins                   ``PLANSMITH_CORS_ORIGINS``
api.rpc_timeout_s                  ``PLANSMITH_API_TIMEOUT_S`` (10)
api.connect_timeout_s              ``PLANSMITH_API_CONNECT_TIMEOUT_S`` (5)
api.sse_poll_s                     ``PLANSMITH_SSE_POLL_S`` (0.25)
api.sse_linger_s                   ``PLANSMITH_SSE_LINGER_S`` (60)
api.log_format                     ``PLANSMITH_LOG_FORMAT`` (``json``)
api.log_level                      ``PLANSMITH_LOG_LEVEL`` (``INFO``)
models.anthropic_api_key           ``ANTHROPIC_API_KEY``
models.models                      ``PLANSMITH_MODELS``
models.llm_timeout_s               ``PLANSMITH_LLM_TIMEOUT_S`` (120)
models.ollama_url                  ``PLANSMITH_OLLAMA_URL`` (an Ollama server, e.g.
                                   ``http://127.0.0.1:11434``)
policy.policy                      ``PLANSMITH_POLICY``
policy.trust_half_life_days        ``PLANSMITH_TRUST_HALF_LIFE_DAYS``
sandbox.*                          ``PLANSMITH_SANDBOX_*`` (see :class:`SandboxSettings`)
http.*                             ``PLANSMITH_HTTP_*`` (see :class:`HttpSettings`)
secrets.file                       ``PLANSMITH_SECRETS_FILE`` (and ``PLANSMITH_SECRET_<NAME>``)
webhooks.*                         ``PLANSMITH_WEBHOOK_*`` (see :class:`WebhookSettings`)
=================================  ===========================================================

docs/operating.md explains each one for an operator. Tracing is configured by the
standard ``OTEL_*`` variables, which the OpenTelemetry SDK reads itself
(:mod:`config.telemetry`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from config.http import UrlPolicy, parse_host_rules
from config.models import DEFAULT_MODELS, ModelConfig, parse_models
from config.policy import PolicyThresholds, parse_thresholds

ENV_FILE = ".env"


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


class _Section(BaseSettings):
    """A part of the settings; fields are set by their variable or, in code, by name."""

    model_config = SettingsConfigDict(env_file=ENV_FILE, extra="ignore", populate_by_name=True)
    env_prefix_: ClassVar[str] = ""

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable that sets ``field``."""
        alias = cls.model_fields[field].validation_alias
        return alias if isinstance(alias, str) else f"{cls.env_prefix_}{field}".upper()


class TemporalSettings(_Section):
    address: str = Field(default="localhost:7233", validation_alias="TEMPORAL_ADDRESS")
    namespace: str = Field(default="default", validation_alias="TEMPORAL_NAMESPACE")
    task_queue: str = Field(
        default="plans", validation_alias="PLANSMITH_TASK_QUEUE", description="the plans' queue"
    )
    db_file: str = Field(
        default=".plansmith/temporal.db",
        validation_alias="PLANSMITH_TEMPORAL_DB",
        description="where the embedded dev server keeps its state",
    )
    ui_url: str | None = Field(
        default=None,
        validation_alias="PLANSMITH_UI_URL",
        description="where people open the Temporal Web UI (default: the Temporal host, port + 1000)",
    )
    worker_connect_wait_s: float = Field(
        default=60.0,
        ge=0,
        validation_alias="PLANSMITH_WORKER_CONNECT_WAIT_S",
        description="how long a starting worker keeps trying to reach Temporal (a server "
        "restarting, a stack starting in any order) before it gives up",
    )
    heartbeat_timeout_s: float = Field(
        default=20.0,
        gt=0,
        validation_alias="PLANSMITH_HEARTBEAT_TIMEOUT_S",
        description="a step activity that does not heartbeat this long is retried elsewhere",
    )
    max_concurrent_plans: int = Field(
        default=0,
        ge=0,
        validation_alias="PLANSMITH_MAX_CONCURRENT_PLANS",
        description="plans of the task queue executing at once; the others wait `queued` "
        "(0: no limit). Read where plans are started (API, CLI)",
    )
    max_concurrent_plans_per_agent: int = Field(
        default=0,
        ge=0,
        validation_alias="PLANSMITH_MAX_CONCURRENT_PLANS_PER_AGENT",
        description="plans of one agent_id executing at once (0: no limit)",
    )
    limiter_check_s: float = Field(
        default=30.0,
        gt=0,
        validation_alias="PLANSMITH_LIMITER_CHECK_S",
        description="while plans are queued, how often the limiter checks that the plans "
        "holding slots still run (a plan terminated in Temporal cannot give its slot back)",
    )
    worker_metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        validation_alias="PLANSMITH_WORKER_METRICS_PORT",
        description="the worker serves the Temporal SDK's own metrics for Prometheus on "
        "this port (GET /metrics); unset: not served",
    )
    worker_metrics_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        validation_alias="PLANSMITH_WORKER_METRICS_HOST",
        description="the address the worker's metrics endpoint binds (0.0.0.0 or :: for "
        "every interface, e.g. in a container scraped from outside)",
    )

    tls: bool = Field(
        default=False,
        validation_alias="PLANSMITH_TEMPORAL_TLS",
        description="reach Temporal over TLS (implied by any other TLS setting)",
    )
    tls_cert: str | None = Field(
        default=None,
        validation_alias="PLANSMITH_TEMPORAL_TLS_CERT",
        description="client certificate (PEM file) for mTLS, e.g. Temporal Cloud",
    )
    tls_key: str | None = Field(
        default=None,
        validation_alias="PLANSMITH_TEMPORAL_TLS_KEY",
        description="the client certificate's private key (PEM file)",
    )
    tls_ca: str | None = Field(
        default=None,
        validation_alias="PLANSMITH_TEMPORAL_TLS_CA",
        description="CA certificate(s) (PEM file) that sign the server's certificate "
        "(default: the system's roots)",
    )
    tls_server_name: str | None = Field(
        default=None,
        validation_alias="PLANSMITH_TEMPORAL_TLS_SERVER_NAME",
        description="the name the server's certificate must carry (default: the host)",
    )
    payload_key: str | None = Field(
        default=None,
        validation_alias="PLANSMITH_PAYLOAD_KEY",
        repr=False,
        description="base64 of 32 random bytes: every payload sent to Temporal (inputs, "
        "results, signals, queries, failures) is encrypted with AES-256-GCM; unset: not encrypted",
    )
    payload_key_id: str | None = Field(
        default=None,
        validation_alias="PLANSMITH_PAYLOAD_KEY_ID",
        description="the name written next to each encrypted payload (default: derived from "
        "the key), so payloads of an older key can still be read after a rotation",
    )
    payload_old_keys: str | None = Field(
        default=None,
        validation_alias="PLANSMITH_PAYLOAD_OLD_KEYS",
        repr=False,
        description="comma-separated older keys, each BASE64 or ID:BASE64, still used to "
        "decrypt (never to encrypt)",
    )

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"must be host:port, got {value!r}")
        return value

    @field_validator("payload_key")
    @classmethod
    def _check_key(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            _decode_key(value)
            return value.strip()
        return None

    @field_validator("payload_old_keys")
    @classmethod
    def _check_old_keys(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            _parse_old_keys(value)
            return value
        return None

    @model_validator(mode="after")
    def _cert_with_key(self) -> TemporalSettings:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError(
                "PLANSMITH_TEMPORAL_TLS_CERT and PLANSMITH_TEMPORAL_TLS_KEY go together "
                "(a client certificate needs its key)"
            )
        if self.payload_key_id is not None and not self.payload_key:
            raise ValueError("PLANSMITH_PAYLOAD_KEY_ID is set without PLANSMITH_PAYLOAD_KEY")
        if self.payload_old_keys and not self.payload_key:
            raise ValueError(
                "PLANSMITH_PAYLOAD_OLD_KEYS is set without PLANSMITH_PAYLOAD_KEY "
                "(the current key encrypts; old keys only decrypt)"
            )
        return self

    @property
    def tls_enabled(self) -> bool:
        """Whether Temporal is reached over TLS."""
        return self.tls or any((self.tls_cert, self.tls_ca, self.tls_server_name))

    def payload_keys(self) -> tuple[str, dict[str, bytes]] | None:
        """The encryption key's id and every key by id (current and old), or None when
        payloads are not encrypted."""
        if not self.payload_key:
            return None
        key = _decode_key(self.payload_key)
        current = self.payload_key_id or key_id_of(key)
        keys = dict(_parse_old_keys(self.payload_old_keys or ""))
        keys[current] = key
        return current, keys

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def ui_port(self) -> int:
        return self.port + 1000

    @property
    def worker_metrics_address(self) -> str | None:
        """``host:port`` (``[v6]:port``) where the worker serves its metrics, or None."""
        if self.worker_metrics_port is None:
            return None
        host = self.worker_metrics_host.strip().strip("[]")
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.worker_metrics_port}"


def key_id_of(key: bytes) -> str:
    """The default id of a payload key: a short hash, which says nothing of the key."""
    return "k-" + hashlib.sha256(b"plansmith-payload-key:" + key).hexdigest()[:12]


def _decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64 (e.g. from `openssl rand -base64 32`)") from None
    if len(key) != 32:
        raise ValueError(f"must be base64 of 32 bytes (AES-256), got {len(key)} bytes")
    return key


def _parse_old_keys(text: str) -> list[tuple[str, bytes]]:
    out = []
    for i, item in enumerate(p.strip() for p in text.split(",")):
        if not item:
            continue
        kid, sep, b64 = item.rpartition(":")
        try:
            key = _decode_key(b64)
        except ValueError as e:
            raise ValueError(f"old key {i + 1}: {e}") from None
        out.append((kid if sep else key_id_of(key), key))
    return out


class StoreSettings(_Section):
    database_url: str = Field(default="sqlite:///plansmith.db", validation_alias="DATABASE_URL")
    large_output_bytes: int = Field(
        default=262144,
        gt=0,
        validation_alias="PLANSMITH_LARGE_OUTPUT_BYTES",
        description="step outputs larger than this (JSON bytes) are kept in the store and "
        "passed by reference",
    )
    connect_timeout_s: float = Field(
        default=5.0,
        ge=1,
        le=600,
        validation_alias="PLANSMITH_DB_CONNECT_TIMEOUT_S",
        description="PostgreSQL: longest wait to open a connection (libpq connect_timeout, "
        "whole seconds)",
    )
    statement_timeout_s: float = Field(
        default=30.0,
        ge=0,
        le=86400,
        validation_alias="PLANSMITH_DB_STATEMENT_TIMEOUT_S",
        description="PostgreSQL: the server cancels a statement running longer (0: never); "
        "migrations are not bounded",
    )
    lock_timeout_s: float = Field(
        default=10.0,
        ge=0,
        le=86400,
        validation_alias="PLANSMITH_DB_LOCK_TIMEOUT_S",
        description="PostgreSQL: the server gives up waiting for a row or table lock after "
        "this (0: never)",
    )
    busy_timeout_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        validation_alias="PLANSMITH_DB_BUSY_TIMEOUT_S",
        description="SQLite: how long a statement waits for another writer's lock",
    )
    pool_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=600,
        validation_alias="PLANSMITH_DB_POOL_TIMEOUT_S",
        description="longest wait for a free connection of the process's pool",
    )
    read_threads: int = Field(
        default=8,
        ge=1,
        le=256,
        validation_alias="PLANSMITH_DB_READ_THREADS",
        description="API: threads that talk to the store; when all are busy (a slow or hung "
        "database) a store read answers 503 at once",
    )


API_ROLES = ("agent", "operator", "admin")
DEFAULT_API_ROLE = "operator"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def parse_api_keys(raw: str | None) -> list[tuple[str, str | None, str]]:
    """``PLANSMITH_API_KEYS`` as ``(key, owner or None, role)`` entries.

    An entry is ``key``, ``key:owner`` or ``key:owner:role`` (role: agent, operator — the
    default — or admin); blank entries are ignored. Raises ValueError naming the variable
    and the entry's position, never the key itself.
    """
    entries: list[tuple[str, str | None, str]] = []
    for position, item in enumerate((raw or "").split(","), start=1):
        item = item.strip()
        if not item:
            continue
        key, _, rest = item.partition(":")
        owner, _, role = rest.partition(":")
        key, owner, role = key.strip(), owner.strip(), role.strip().lower()
        if not key:
            raise ValueError(f"PLANSMITH_API_KEYS entry {position} has an empty key")
        if role and role not in API_ROLES:
            shown = role if len(role) <= 40 else role[:40] + "…"
            raise ValueError(
                f"PLANSMITH_API_KEYS entry {position} (owner {owner or '(none)'!r}) has the "
                f"unknown role {shown!r}; roles are {', '.join(API_ROLES)} "
                "(format key:owner[:role])"
            )
        entries.append((key, owner or None, role or DEFAULT_API_ROLE))
    return entries


class ApiSettings(_Section):
    keys: str | None = Field(
        default=None,
        validation_alias="PLANSMITH_API_KEYS",
        repr=False,
        description="comma-separated key:owner[:role] entries, role agent, operator (the "
        "default) or admin; unset: no key is asked for (local development only)",
    )
    allow_open_api: bool = Field(
        default=False,
        validation_alias="PLANSMITH_ALLOW_OPEN_API",
        description="1: `plansmith api` may listen beyond loopback without API keys "
        "(anyone who reaches it can approve plans); otherwise it refuses to start",
    )
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        validation_alias="PLANSMITH_API_ALLOWED_HOSTS",
        description="comma-separated host names the API answers to (the Host header; a "
        "request naming another host gets 400, which defeats DNS rebinding); `*.example.com` "
        "matches its subdomains, `*` any host; default: localhost, 127.0.0.1, [::1] and the "
        "host `plansmith api` is bound to",
    )
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        validation_alias="PLANSMITH_CORS_ORIGINS",
        description="comma-separated origins allowed to call the API from a browser; * allows any",
    )
    rpc_timeout_s: float = Field(
        default=10.0,
        ge=0.001,
        validation_alias="PLANSMITH_API_TIMEOUT_S",
        description="longest wait for one Temporal call or database read; then 503",
    )
    connect_timeout_s: float = Field(
        default=5.0,
        ge=0.001,
        validation_alias="PLANSMITH_API_CONNECT_TIMEOUT_S",
        description="longest wait to connect to Temporal",
    )
    sse_poll_s: float = Field(
        default=0.25,
        ge=0.01,
        validation_alias="PLANSMITH_SSE_POLL_S",
        description="how often the server reads a watched plan's status for /events",
    )
    sse_linger_s: float = Field(
        default=60.0,
        ge=0,
        validation_alias="PLANSMITH_SSE_LINGER_S",
        description="how long a plan's event journal is kept after its last watcher left",
    )
    sse_ping_s: float = Field(default=15.0, gt=0, description="keep-alive comment interval")
    sse_give_up_s: float = Field(
        default=30.0, gt=0, description="how long a stream waits for an unreachable Temporal"
    )
    sse_retry_ms: int = Field(default=2000, gt=0, description="the reconnect delay sent")
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        validation_alias="PLANSMITH_API_MAX_BODY_BYTES",
        description="largest request body the API reads (counted as it arrives, with or "
        "without Content-Length); a bigger one gets 413",
    )
    max_json_depth: int = Field(
        default=64,
        ge=8,
        le=500,
        validation_alias="PLANSMITH_API_MAX_JSON_DEPTH",
        description="deepest nesting of arrays and objects in a request body; a deeper one "
        "gets 422 before it is parsed",
    )
    max_plan_steps: int = Field(
        default=10_000,
        ge=1,
        validation_alias="PLANSMITH_MAX_PLAN_STEPS",
        description="most steps a plan may have; validation refuses a bigger one (the API "
        "with 422, `plansmith validate` and `run` too)",
    )
    log_format: Literal["json", "text"] = Field(
        default="json", validation_alias="PLANSMITH_LOG_FORMAT"
    )
    log_level: str = Field(default="INFO", validation_alias="PLANSMITH_LOG_LEVEL")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(o.strip() for o in value.split(",") if o.strip())
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(h.strip().lower() for h in value.split(",") if h.strip())
        return value

    @field_validator("keys")
    @classmethod
    def _check_keys(cls, value: str | None) -> str | None:
        parse_api_keys(value)  # raises ValueError("PLANSMITH_API_KEYS entry N ...")
        return value

    @property
    def keys_enabled(self) -> bool:
        return bool(parse_api_keys(self.keys))

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return (value.strip().lower() or "json") if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return (value.strip().upper() or "INFO") if isinstance(value, str) else value

    @property
    def json_logs(self) -> bool:
        return self.log_format == "json"


class ModelSettings(_Section):
    anthropic_api_key: str | None = Field(
        default=None, validation_alias="ANTHROPIC_API_KEY", repr=False
    )
    models: str | None = Field(
        default=None,
        validation_alias="PLANSMITH_MODELS",
        description="the models the selector may pick: a JSON list of objects "
        '{"name", "capabilities", "max_tokens", "priority", "enabled", "provider"} (provider: '
        "anthropic, the default, or ollama; default list: a Sonnet "
        "for planning and code, a Haiku for fast work); models configured in the store "
        "(PUT /api/models/{name}) override these by name",
    )
    llm_timeout_s: float = Field(
        default=120.0,
        gt=0,
        validation_alias="PLANSMITH_LLM_TIMEOUT_S",
        description="how long one language-model call may take before it fails (and is "
        "retried by Temporal)",
    )

    ollama_url: str | None = Field(
        default=None,
        validation_alias="PLANSMITH_OLLAMA_URL",
        description="the base URL of an Ollama server (e.g. http://127.0.0.1:11434): models "
        'configured with "provider": "ollama" are answered by it; nothing else is ever '
        "contacted for them",
    )

    @field_validator("ollama_url", mode="before")
    @classmethod
    def _check_ollama_url(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        value = value.strip()
        if not value:
            return None
        parsed = urlsplit(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                "PLANSMITH_OLLAMA_URL must be an http(s) URL like http://127.0.0.1:11434"
            )
        if parsed.query or parsed.fragment or parsed.username or parsed.password:
            raise ValueError(
                "PLANSMITH_OLLAMA_URL must be a plain base URL (no credentials, query or fragment)"
            )
        return value.rstrip("/")

    def providers(self) -> frozenset[str]:
        """The model providers this process can reach: ``anthropic`` with
        ``ANTHROPIC_API_KEY``, ``ollama`` with ``PLANSMITH_OLLAMA_URL``; empty: the offline
        model answers every call."""
        found = set()
        if self.anthropic_api_key:
            found.add("anthropic")
        if self.ollama_url:
            found.add("ollama")
        return frozenset(found)

    @field_validator("models")
    @classmethod
    def _check_models(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_models(value)  # raises ValueError("PLANSMITH_MODELS ...")
        return value

    def configured(self) -> list[ModelConfig]:
        """The models of ``PLANSMITH_MODELS``, or the defaults when it is unset."""
        text = self.models
        return parse_models(text) if text and text.strip() else list(DEFAULT_MODELS)


class PolicySettings(_Section):
    policy: str | None = Field(
        default=None,
        validation_alias="PLANSMITH_POLICY",
        description="thresholds of the adaptive approval policy (require_approval: auto), a "
        "JSON object with any of: trust_levels, max_unattended_risk, min_runs, gate_level, "
        "trust {half_life_days, prior, prior_weight, ...}, risk {many_steps, very_many_steps}",
    )
    trust_half_life_days: float | None = Field(
        default=None,
        gt=0,
        validation_alias="PLANSMITH_TRUST_HALF_LIFE_DAYS",
        description="age in days at which a run counts half towards an agent's trust "
        "(default 30; overrides trust.half_life_days of PLANSMITH_POLICY)",
    )

    @field_validator("policy")
    @classmethod
    def _check_policy(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_thresholds(value)  # raises ValueError("PLANSMITH_POLICY ...")
        return value

    def thresholds(self) -> PolicyThresholds:
        """The adaptive approval policy's thresholds."""
        return parse_thresholds(self.policy, self.trust_half_life_days)


class SandboxSettings(_Section):
    """The code sandbox (the ``python`` tool). A plan step may ask for other limits with
    its params, but never for more than the maxima here. The one switch that weakens the
    sandbox, ``PLANSMITH_SANDBOX_ISOLATION=none``, must be set on purpose."""

    model_config = SettingsConfigDict(
        env_prefix="PLANSMITH_SANDBOX_", env_file=ENV_FILE, extra="ignore", populate_by_name=True
    )
    env_prefix_: ClassVar[str] = "PLANSMITH_SANDBOX_"

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


class HttpSettings(_Section):
    """The guard rails of the ``http_request`` tool: where it may connect (the URL policy,
    :mod:`config.http`), how much it reads and how long it may wait. A step's params can
    ask for less, never for more."""

    model_config = SettingsConfigDict(
        env_prefix="PLANSMITH_HTTP_", env_file=ENV_FILE, extra="ignore", populate_by_name=True
    )
    env_prefix_: ClassVar[str] = "PLANSMITH_HTTP_"

    allow: str | None = Field(
        default=None,
        description="comma-separated host names (example.com, *.example.com), addresses and "
        "CIDRs; when set, http_request reaches only these. An address or CIDR here also "
        "lifts the default denials for it (a host name does not)",
    )
    deny: str | None = Field(
        default=None,
        description="comma-separated host names, addresses and CIDRs http_request never "
        "reaches (wins over everything)",
    )
    allow_private: bool = Field(
        default=True,
        description="false: refuse private addresses (10/8, 172.16/12, 192.168/16, "
        "100.64/10, fc00::/7). Link-local and cloud metadata addresses are always refused "
        "unless PLANSMITH_HTTP_ALLOW names them",
    )
    allow_loopback: bool = Field(
        default=True, description="false: refuse loopback addresses (127/8, ::1)"
    )
    timeout_s: float = Field(
        default=30.0, gt=0, description="how long a request may take when its step does not say"
    )
    max_timeout_s: float = Field(
        default=300.0, gt=0, description="the largest timeout_s a step may ask for"
    )
    max_response_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        description="the largest response body read (after decompression); a larger one "
        "fails the step, and the reading stops there",
    )
    max_redirects: int = Field(default=10, ge=0, description="redirects followed at most")

    @field_validator("allow", "deny")
    @classmethod
    def _check_rules(cls, value: str | None, info: ValidationInfo) -> str | None:
        parse_host_rules(value, f"PLANSMITH_HTTP_{str(info.field_name).upper()}")
        return value

    @model_validator(mode="after")
    def _default_within_maximum(self) -> HttpSettings:
        if self.timeout_s > self.max_timeout_s:
            raise ValueError(
                f"PLANSMITH_HTTP_TIMEOUT_S={self.timeout_s:g} is above "
                f"PLANSMITH_HTTP_MAX_TIMEOUT_S={self.max_timeout_s:g}"
            )
        return self

    def policy(self) -> UrlPolicy:
        """The URL policy these settings describe."""
        return UrlPolicy(
            allow=parse_host_rules(self.allow, "PLANSMITH_HTTP_ALLOW"),
            deny=parse_host_rules(self.deny, "PLANSMITH_HTTP_DENY"),
            allow_private=self.allow_private,
            allow_loopback=self.allow_loopback,
        )


class SecretsSettings(_Section):
    """Where the worker finds the values of ``{{ secrets.NAME }}``: its environment
    (``PLANSMITH_SECRET_<NAME>``, read by the worker when a step needs it) and this file.
    Only the worker needs them; the API and the CLI never see a value."""

    file: str | None = Field(
        default=None,
        validation_alias="PLANSMITH_SECRETS_FILE",
        description="a file of secrets: a JSON object {NAME: value} or NAME=value lines "
        "(# comments); read anew when it changes; the environment wins on a clash",
    )


# --- webhooks (docs/webhooks.md) ------------------------------------------------------


class WebhookSettings(_Section):
    """How webhook deliveries are sent (docs/webhooks.md). Where they may go is the
    ``http_request`` tool's URL policy (``PLANSMITH_HTTP_ALLOW``/``DENY``/...), and a
    response is read up to ``PLANSMITH_HTTP_MAX_RESPONSE_BYTES``."""

    model_config = SettingsConfigDict(
        env_prefix="PLANSMITH_WEBHOOK_", env_file=ENV_FILE, extra="ignore", populate_by_name=True
    )
    env_prefix_: ClassVar[str] = "PLANSMITH_WEBHOOK_"

    timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="how long one delivery attempt may take"
    )
    max_attempts: int = Field(
        default=10, ge=1, le=100, description="attempts of one delivery before it is given up"
    )
    max_age_s: float = Field(
        default=86400.0,
        gt=0,
        description="a delivery still failing this long after its event is given up",
    )
    retry_delay_s: float = Field(
        default=2.0, gt=0, description="the wait after the first failed attempt (then doubled)"
    )
    max_retry_delay_s: float = Field(
        default=600.0, gt=0, description="the longest wait between two attempts"
    )
    concurrency: int = Field(
        default=16, ge=1, le=256, description="deliveries one dispatcher sends at once"
    )


SECTIONS: dict[str, type[_Section]] = {
    "temporal": TemporalSettings,
    "store": StoreSettings,
    "api": ApiSettings,
    "models": ModelSettings,
    "policy": PolicySettings,
    "sandbox": SandboxSettings,
    "secrets": SecretsSettings,
    "http": HttpSettings,
    "webhooks": WebhookSettings,
}


class Settings(BaseModel):
    """The whole configuration of a Plansmith process, one section per concern."""

    temporal: TemporalSettings = Field(default_factory=TemporalSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    secrets: SecretsSettings = Field(default_factory=SecretsSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)

    def replace(self, **sections: dict[str, Any]) -> Settings:
        """A copy with some fields of some sections changed, validated like the environment:
        ``settings.replace(temporal={"task_queue": "q1"})``."""
        update: dict[str, Any] = {}
        for name, fields in sections.items():
            section = getattr(self, name)
            try:
                update[name] = type(section).model_validate(
                    {**section.model_dump(), **fields}, by_name=True
                )
            except ValidationError as e:
                raise _config_error(e, type(section)) from None
        return self.model_copy(update=update)


def _config_error(error: ValidationError, section: type[_Section]) -> ConfigError:
    problems = []
    for err in error.errors():
        loc = [str(p) for p in err["loc"]]
        field = next(
            (
                f
                for f, info in section.model_fields.items()
                if f in loc or info.validation_alias in loc
            ),
            None,
        )
        msg = str(err["msg"]).removeprefix("Value error, ")
        # a rule across fields names its variables itself
        problems.append(f"{section.env_name(field)}: {msg}" if field else msg)
    return ConfigError("invalid configuration: " + "; ".join(problems))


def load_settings(env_file: str | None = ENV_FILE) -> Settings:
    """Read and validate every section from the environment and ``env_file``.

    Raises:
        ConfigError: naming each variable whose value cannot be used.
    """
    sections: dict[str, _Section] = {}
    for name, cls in SECTIONS.items():
        try:
            sections[name] = cls(_env_file=env_file)  # type: ignore[call-arg]
        except ValidationError as e:
            raise _config_error(e, cls) from None
    return Settings.model_validate(sections)


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once (``get_settings.cache_clear()`` reads them anew)."""
    return load_settings()


def env_names() -> dict[str, str]:
    """Every variable Plansmith reads, with the ``section.field`` it sets."""
    return {
        cls.env_name(field): f"{name}.{field}"
        for name, cls in SECTIONS.items()
        for field in cls.model_fields
    }
