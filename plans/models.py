"""The plan document as pydantic v2 models.

These models only check the *shape* of one field at a time. Everything that needs the
whole document (duplicate ids, dependencies, cycles, tools, templates) is done by
:func:`plans.validation.validate_plan`, which reports every problem with its location.
"""

from __future__ import annotations

import hashlib
import json
import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from plans.webhooks import MAX_WEBHOOKS_PER_PLAN, PlanWebhook

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ID_RE = re.compile(ID_PATTERN)


# the tool a code step's code runs with (contracts.tools.PYTHON_TOOL)
PYTHON_TOOL = "python"


class StepKind(StrEnum):
    TOOL = "tool"
    LLM = "llm"
    DECISION = "decision"
    VALIDATION = "validation"
    APPROVAL = "approval"
    # the code model writes Python for the step; it runs in the sandbox (docs/plan-document.md)
    CODE = "code"


class OnError(StrEnum):
    STOP = "stop"
    CONTINUE = "continue"
    ASK = "ask"
    REPLAN = "replan"  # the planner proposes a fix (see plans/replan.py)


class PlanStatus(StrEnum):
    DRAFT = "draft"
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    QUEUED = "queued"  # approved, waiting for a slot under the concurrency limits
    EXECUTING = "executing"
    PAUSED = "paused"
    WAITING_APPROVAL = "waiting_approval"
    WAITING_CLARIFICATION = "waiting_clarification"
    WAITING_CORRECTION = "waiting_correction"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_PLAN_STATUSES


TERMINAL_PLAN_STATUSES = frozenset(
    {
        PlanStatus.COMPLETED,
        PlanStatus.PARTIAL,
        PlanStatus.FAILED,
        PlanStatus.CANCELLED,
        PlanStatus.REJECTED,
    }
)


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    WAITING_CLARIFICATION = "waiting_clarification"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STEP_STATUSES


TERMINAL_STEP_STATUSES = frozenset(
    {StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED}
)


class _Strict(BaseModel):
    """Unknown fields are an error: a typo like ``depends-on`` must not be ignored."""

    model_config = ConfigDict(extra="forbid")


class PlanOptions(_Strict):
    require_approval: bool | Literal["auto"] = True
    auto_approve: bool = False
    approval_timeout_s: float | None = Field(default=None, gt=0)
    on_approval_timeout: Literal["reject", "approve"] = "reject"
    allow_parallel: bool = True
    max_parallel_steps: int = Field(default=4, ge=1, le=1000)
    on_error: OnError = OnError.STOP
    step_timeout_s: float = Field(default=300, gt=0)
    total_timeout_s: float | None = Field(default=None, gt=0)
    default_max_retries: int = Field(default=0, ge=0, le=100)
    default_retry_delay_s: float = Field(default=1, ge=0)
    # Every other wait for a person ends by a durable timer too, when a timeout is set.
    step_approval_timeout_s: float | None = Field(default=None, gt=0)
    on_step_approval_timeout: Literal["reject", "approve"] = "reject"
    clarification_timeout_s: float | None = Field(default=None, gt=0)
    on_clarification_timeout: Literal["fail", "skip", "proceed"] = "fail"
    correction_timeout_s: float | None = Field(default=None, gt=0)
    # on_error: replan -- at most this many proposals of the planner per run of the plan
    max_replans: int = Field(default=2, ge=0, le=10)
    # This plan's own webhooks (docs/webhooks.md); they receive its events only.
    webhooks: list[PlanWebhook] = Field(default_factory=list, max_length=MAX_WEBHOOKS_PER_PLAN)

    @property
    def parallel_limit(self) -> int:
        return self.max_parallel_steps if self.allow_parallel else 1


class Step(_Strict):
    id: str
    kind: StepKind = StepKind.TOOL
    description: str = ""
    tool: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    when: str | None = None
    max_retries: int | None = Field(default=None, ge=0, le=100)
    retry_delay_s: float | None = Field(default=None, ge=0)
    backoff: float = Field(default=2.0, ge=1.0, le=100.0)
    timeout_s: float | None = Field(default=None, gt=0)
    requires_approval: bool = False
    requires_clarification: bool = False
    clarification_question: str | None = None
    idempotent: bool = True
    # what this step's failure does (None: the plan's options.on_error)
    on_error: OnError | None = None
    # A permission, not a request: the step may take the fast path (a local activity)
    # only when its work is declared fast by the worker's code (a tool with
    # ``ToolSpec.fast``, a validation step without a judge); ``false`` forces the
    # ordinary activity.
    fast: bool = True

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        if not ID_RE.fullmatch(v):
            raise ValueError(
                f"step id {v!r} must match {ID_PATTERN} (lower-case letters, digits, '_' and '-')"
            )
        return v


class Plan(_Strict):
    id: str | None = None
    title: str = ""
    description: str = ""
    agent_id: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    options: PlanOptions = Field(default_factory=PlanOptions)
    steps: list[Step]

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str | None) -> str | None:
        if v is not None and not ID_RE.fullmatch(v):
            raise ValueError(f"plan id {v!r} must match {ID_PATTERN}")
        return v

    # Caches, never serialised and not part of equality. A plan in a run is replaced
    # whole when it changes (corrections build a new Plan); assigning a field clears them,
    # and each is also keyed by the identity of what it was computed from.
    _by_id: dict[str, int] | None = PrivateAttr(default=None)
    _by_id_key: tuple[int, int] | None = PrivateAttr(default=None)
    _digest: str | None = PrivateAttr(default=None)
    _digest_key: tuple[Any, ...] | None = PrivateAttr(default=None)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if not name.startswith("_"):
            self._by_id = self._digest = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]

    def positions(self) -> dict[str, int]:
        """Each step id's index in ``steps`` (cached: O(1) per lookup)."""
        key = (id(self.steps), len(self.steps))
        by_id = self._by_id
        if by_id is None or self._by_id_key != key:
            by_id = {}
            for i, s in enumerate(self.steps):
                by_id.setdefault(s.id, i)
            self._by_id, self._by_id_key = by_id, key
        return by_id

    def step(self, step_id: str) -> Step:
        i = self.positions().get(step_id)
        if i is not None:
            s = self.steps[i]
            if s.id == step_id:
                return s
            self._by_id = None  # a step was replaced in place: look again
            i = self.positions().get(step_id)
            if i is not None:
                return self.steps[i]
        raise KeyError(step_id)

    def step_map(self) -> dict[str, Step]:
        return {s.id: s for s in self.steps}

    def digest(self) -> str:
        """A stable digest of the document, so an approval can be bound to what it saw.

        Fields left at their defaults are not part of it, so a new optional field in a
        later release does not make every earlier approval look stale.
        """
        key = (
            id(self.steps),
            len(self.steps),
            id(self.options),
            id(self.inputs),
            self.id,
            self.title,
            self.description,
            self.agent_id,
        )
        if self._digest is not None and self._digest_key == key:
            return self._digest
        doc = self.model_dump(mode="json", exclude_defaults=True)
        body = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        self._digest = hashlib.sha256(body.encode()).hexdigest()[:16]
        self._digest_key = key
        return self._digest

    @property
    def workflow_id(self) -> str:
        if self.id is None:
            raise ValueError("plan has no id yet")
        return workflow_id_for(self.id)


def workflow_id_for(plan_id: str) -> str:
    return f"plan-{plan_id}"


class ToolSpec(BaseModel):
    """What the plan layer needs to know about a tool; the code lives in activities/."""

    name: str
    description: str
    params_schema: dict[str, Any]
    risk: Literal["low", "medium", "high", "critical"] = "low"
    idempotent: bool = True
    activity: str | None = Field(
        default=None, description="activity that runs it, when not the common execute_step"
    )
    task_queue: str | None = Field(
        default=None,
        description="logical task queue of a dedicated worker pool (e.g. 'sandbox'); "
        "None = the plan's own queue",
    )
    fast: bool = Field(
        default=False,
        description="the tool does no I/O and ends quickly (pure computation): its steps may "
        "run as local activities on the workflow's worker (the fast path); never for a tool "
        "that reaches the network, the disk, a model or a clock",
    )
