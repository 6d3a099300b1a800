"""Webhooks in the domain: the event names, and the webhooks a plan names in its options.

Pure code (no I/O). The subscriptions themselves live in the store (``store.webhooks``),
deliveries are sent by the worker (``activities.webhooks``); docs/webhooks.md tells it all.

A plan's own webhook (``options.webhooks[i]``) is ``{url, events, secret?}`` like a
subscription made with ``POST /api/webhooks``, with one difference: the plan document is
kept in history, in the store and shown in the console, so its ``secret`` may only be a
reference to a worker secret, ``{{ secrets.NAME }}``, never the value.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

EventName = Literal[
    "plan.started",
    "plan.waiting",
    "plan.completed",
    "plan.failed",
    "step.started",
    "step.completed",
    "step.failed",
]
EVENTS: tuple[str, ...] = (
    "plan.started",
    "plan.waiting",
    "plan.completed",
    "plan.failed",
    "step.started",
    "step.completed",
    "step.failed",
)
MAX_URL = 2000
MAX_WEBHOOKS_PER_PLAN = 5
SECRET_REF = re.compile(r"^\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}$")


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook's address (shape only: where it may go is the URL
    policy's say, at registration for a literal address and at every delivery), or None."""
    if len(url) > MAX_URL:
        return f"the URL is longer than {MAX_URL} characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"not a URL: {e}"
    if parts.scheme not in ("http", "https"):
        return "the URL must start with http:// or https://"
    if not parts.hostname:
        return "the URL has no host"
    if parts.username is not None or parts.password is not None:
        return "the URL may not carry a user name or password (use the secret to sign instead)"
    if port == 0:
        return "the URL's port cannot be 0"
    if parts.fragment:
        return "the URL may not have a #fragment"
    return None


def events_problem(events: list[str]) -> str | None:
    """Why ``events`` cannot be a webhook's event list, or None."""
    if not events:
        return "name at least one event: " + ", ".join(EVENTS)
    seen: set[str] = set()
    for e in events:
        if e in seen:
            return f"event {e!r} is named twice"
        seen.add(e)
    return None


def secret_name(ref: str | None) -> str | None:
    """The worker secret a plan webhook's ``secret`` names (``{{ secrets.NAME }}``)."""
    if ref is None:
        return None
    m = SECRET_REF.match(ref)
    return m.group(1) if m else None


class WebhookTarget(BaseModel):
    """Where a webhook's events go: its ``url`` and ``events``, both checked (a
    subscription of the API and a plan's own webhook share these)."""

    url: str
    events: list[EventName]

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        problem = url_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str]) -> list[str]:
        problem = events_problem(v)
        if problem:
            raise ValueError(problem)
        return v


class PlanWebhook(WebhookTarget):
    """A webhook a plan names for itself (``options.webhooks``): it receives this plan's
    events only."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http(s) URL the events are POSTed to")
    events: list[EventName] = Field(description="the events it receives (at least one)")
    secret: str | None = Field(
        default=None,
        description="{{ secrets.NAME }}: the worker secret that signs the deliveries "
        "(X-Plansmith-Signature); never the value itself. Without it deliveries are unsigned",
    )

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        if v is not None and secret_name(v) is None:
            raise ValueError(
                "a plan's webhook secret must be a reference to a worker secret, "
                "{{ secrets.NAME }}, never the value: the plan document is stored and shown"
            )
        return v
