"""The step activity's contract: what the workflow hands ``execute_step`` and what
comes back (one object in, one object out, so fields can be added later)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, Field

from plans.models import StepKind

EXECUTE_STEP = "execute_step"
# The error type of ``execute_step`` run as a local activity (the fast path) for a task
# the worker will not run there (a tool its own registry does not declare fast, a stored
# output to read, an output too large to return inline): the workflow runs the step again
# as an ordinary activity. Never a step's failure.
FAST_PATH_REFUSED = "FastPathRefused"


def request_digest(kind: StepKind | str, tool: str | None, params: Any) -> str:
    """A digest of what a step asks for: its kind, its tool and its rendered params.

    Deterministic (canonical JSON), so the workflow computes it on replay too. A
    ``{{ secrets.X }}`` reference is still a reference when this is computed, so the
    digest never depends on a secret's value."""
    body = json.dumps(
        {"kind": getattr(kind, "value", kind), "tool": tool, "params": params},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def request_key(
    plan_id: str, step_id: str, kind: StepKind | str, tool: str | None, params: Any
) -> str:
    """The idempotency key of a step's request: ``<plan>:<step>:<request digest>``.

    The same for the same logical request — a retry, a worker lost mid-step, a
    ``retry_step`` or a resume-from-failure of a step whose request did not change (the
    plan id survives a resume) — and different once a correction (or a changed upstream
    output it is rendered from) changes the request."""
    return f"{plan_id}:{step_id}:{request_digest(kind, tool, params)}"


class StepTask(BaseModel):
    plan_id: str
    step_id: str
    kind: StepKind
    tool: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str
    step_version: int = 1
    context: dict[str, Any] = Field(default_factory=dict)
    # Where the plan's own params reference a secret (``{{ secrets.NAME }}``): the paths
    # into ``params`` the activity resolves. A reference anywhere else (inside a value a
    # step or an input produced, or in a tool call a model asked for) stays text.
    secret_params: list[list[str | int]] = Field(default_factory=list)


class StepOutcome(BaseModel):
    output: Any = None
    attempt: int = 1
    # An llm step whose model asked for tools: the calls the workflow runs next, and the
    # conversation (and model usage) to continue from once their results are in.
    calls: list[dict[str, Any]] = Field(default_factory=list)
    conversation: list[dict[str, Any]] = Field(default_factory=list)
    usage: dict[str, Any] = Field(default_factory=dict)
    # A validation step with ``on_unassessed: ask`` whose judge criteria no model
    # assessed: the step is not done, it waits for a person (approve_step passes it).
    unassessed: list[str] = Field(default_factory=list)
