"""One ``Settings`` object, read from the environment and ``.env`` (DESIGN.md §8)."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from plans.policy import PolicyThresholds


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    temporal_address: str = Field(default="localhost:7233", validation_alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field(default="default", validation_alias="TEMPORAL_NAMESPACE")
    task_queue: str = Field(default="plans", validation_alias="PLANSMITH_TASK_QUEUE")
    database_url: str = Field(default="sqlite:///plansmith.db", validation_alias="DATABASE_URL")
    anthropic_api_key: str | None = Field(default=None, validation_alias="ANTHROPIC_API_KEY")
    api_keys: str | None = Field(default=None, validation_alias="PLANSMITH_API_KEYS")
    temporal_db_file: str = Field(
        default=".plansmith/temporal.db", validation_alias="PLANSMITH_TEMPORAL_DB"
    )
    ui_url: str | None = Field(
        default=None,
        validation_alias="PLANSMITH_UI_URL",
        description="where people open the Temporal Web UI (default: the Temporal host, port + 1000)",
    )
    large_output_bytes: int = Field(
        default=262144,
        gt=0,
        validation_alias="PLANSMITH_LARGE_OUTPUT_BYTES",
        description="step outputs larger than this (JSON bytes) are kept in the store and "
        "passed by reference",
    )
    heartbeat_timeout_s: float = Field(
        default=20.0, gt=0, validation_alias="PLANSMITH_HEARTBEAT_TIMEOUT_S"
    )
    models: str | None = Field(
        default=None,
        validation_alias="PLANSMITH_MODELS",
        description="the models the selector may pick: a JSON list of objects "
        '{"name", "capabilities", "max_tokens", "priority", "enabled"} (default: a Sonnet '
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
    policy: str | None = Field(
        default=None,
        validation_alias="PLANSMITH_POLICY",
        description="thresholds of the adaptive approval policy (require_approval: auto), a "
        "JSON object with any of: trust_levels, max_unattended_risk, min_runs, gate_level, "
        "trust {half_life_days, prior, prior_weight, ...}, risk {many_steps, very_many_steps} "
        "(docs/operating.md, Adaptive approval)",
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
        """Bad ``PLANSMITH_POLICY`` fails at start-up, naming the variable and the problem."""
        if value is not None and value.strip():
            from plans.policy import parse_thresholds

            parse_thresholds(value)  # raises ValueError("PLANSMITH_POLICY ...")
        return value

    @field_validator("models")
    @classmethod
    def _check_models(cls, value: str | None) -> str | None:
        """Bad ``PLANSMITH_MODELS`` fails at start-up, naming the variable and the problem."""
        if value is not None and value.strip():
            from activities.llm.selector import parse_models

            parse_models(value)  # raises ValueError("PLANSMITH_MODELS ...")
        return value

    def policy_thresholds(self) -> PolicyThresholds:
        """The adaptive approval policy's thresholds (PLANSMITH_POLICY and friends)."""
        from plans.policy import parse_thresholds

        return parse_thresholds(self.policy, self.trust_half_life_days)

    @property
    def temporal_host(self) -> str:
        return self.temporal_address.rsplit(":", 1)[0]

    @property
    def temporal_port(self) -> int:
        return int(self.temporal_address.rsplit(":", 1)[1])

    @property
    def ui_port(self) -> int:
        return self.temporal_port + 1000


@lru_cache
def get_settings() -> Settings:
    return Settings()
