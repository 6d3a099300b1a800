"""The ``check_secrets`` activity's contract: the secret names a starting plan uses in
(never values); the names the worker does not have come back."""

from __future__ import annotations

from pydantic import BaseModel, Field

CHECK_SECRETS = "check_secrets"


class SecretCheck(BaseModel):
    names: list[str] = Field(default_factory=list)
