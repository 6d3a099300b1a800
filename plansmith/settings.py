"""One ``Settings`` object, read from the environment and ``.env`` (DESIGN.md §8)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
