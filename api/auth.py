"""API keys (``PLANSMITH_API_KEYS``) and who is acting.

Format: comma-separated ``key:owner`` pairs, e.g. ``PLANSMITH_API_KEYS=s3cr3t:alice,t0k3n:ci-bot``.
The key is what comes before the first ``:``; the owner is the actor recorded as ``by``
for every control sent with that key. A key given without ``:owner`` acts as
``key-<first 8 hex digits of its SHA-256>`` (never the key itself, which would land in
the audit trail). Blank entries are ignored.

With keys configured, every route under ``/api`` needs ``Authorization: Bearer <key>``
or ``X-API-Key: <key>`` (401 otherwise); ``/healthz``, ``/readyz`` and the OpenAPI
document and its pages are open. A control body's ``by`` may be left out (the owner is
used) or equal the owner; a different ``by`` is refused with 403 — a key cannot act as
someone else. Without keys, ``by`` comes from the body, ``"api"`` when absent.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi.security import APIKeyHeader, HTTPBearer

from api.errors import forbidden
from api.logs import actor_var

DEFAULT_ACTOR = "api"

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="BearerKey",
    description="`Authorization: Bearer <key>` with a key from PLANSMITH_API_KEYS "
    "(only checked when keys are configured)",
)
header_scheme = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="ApiKeyHeader",
    description="`X-API-Key: <key>`, the same keys as the bearer scheme",
)


@dataclass(frozen=True)
class ApiKeys:
    owners: tuple[tuple[bytes, str], ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.owners)

    @classmethod
    def parse(cls, raw: str | None) -> ApiKeys:
        pairs: list[tuple[bytes, str]] = []
        for item in (raw or "").split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, owner = item.partition(":")
            key, owner = key.strip(), owner.strip()
            if not key:
                raise ValueError("PLANSMITH_API_KEYS has an entry with an empty key")
            if not sep or not owner:
                owner = "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]
            pairs.append((key.encode(), owner))
        return cls(tuple(pairs))

    def owner_of(self, key: str) -> str | None:
        """The owner of ``key``; every configured key is compared in constant time."""
        found = None
        given = key.encode()
        for k, owner in self.owners:
            if hmac.compare_digest(k, given) and found is None:
                found = owner
        return found


@dataclass(frozen=True)
class Principal:
    """Who sent the request: the key's owner, or None when no keys are configured."""

    owner: str | None = None

    def actor(self, body_by: str | None) -> str:
        """The ``by`` recorded for a control; refuses a body ``by`` naming someone else."""
        if self.owner is None:
            actor = body_by or DEFAULT_ACTOR
        elif body_by is not None and body_by != self.owner:
            raise forbidden(
                f"by={body_by!r} differs from the API key's owner {self.owner!r}; "
                "leave `by` out (the key's owner is recorded) or send the owner"
            )
        else:
            actor = self.owner
        actor_var.set(actor)
        return actor
