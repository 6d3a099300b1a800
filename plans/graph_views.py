"""A plan's status told in the nodes/edges execution API's words: one of six
(:data:`StatusWord`), and :class:`ExecutionStatus`, which also names the node running
now (or waiting for a person)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from plans.graph_import import node_id_of
from plans.models import PlanStatus, StepStatus
from plans.views import StatusView

StatusWord = Literal["pending", "running", "paused", "completed", "failed", "stopped"]
"""An execution's status in the API's six words."""


class ExecutionStatus(BaseModel):
    """``GET /api/v1/execute/{execution_id}/status`` (and the answer to starting one)."""

    execution_id: str
    status: StatusWord
    current_node: str | None = Field(
        default=None, description="the node running now (or waiting for a person)"
    )
    progress: float = Field(ge=0, le=1)
    message: str = ""


_STATUS: dict[PlanStatus, StatusWord] = {
    PlanStatus.DRAFT: "pending",
    PlanStatus.PENDING_APPROVAL: "pending",
    PlanStatus.APPROVED: "pending",
    PlanStatus.QUEUED: "pending",
    PlanStatus.EXECUTING: "running",
    PlanStatus.PAUSED: "paused",
    PlanStatus.WAITING_APPROVAL: "paused",
    PlanStatus.WAITING_CLARIFICATION: "paused",
    PlanStatus.WAITING_CORRECTION: "paused",
    PlanStatus.COMPLETED: "completed",
    PlanStatus.PARTIAL: "failed",
    PlanStatus.FAILED: "failed",
    PlanStatus.CANCELLED: "stopped",
    PlanStatus.REJECTED: "stopped",
}


def status_word(status: PlanStatus) -> StatusWord:
    """Plansmith's plan status in the API's six words (waits for a person are ``paused``,
    ``partial`` is ``failed``, ``cancelled`` and ``rejected`` are ``stopped``)."""
    return _STATUS[status]


def execution_status(execution_id: str, view: StatusView) -> ExecutionStatus:
    """An execution's status from its plan's ``status`` query."""
    current = next((s for s in view.steps if s.status == StepStatus.RUNNING), None)
    if current is None and view.waiting_for is not None and view.waiting_for.step_id:
        current = next((s for s in view.steps if s.id == view.waiting_for.step_id), None)
    done = sum(1 for s in view.steps if s.status.terminal)
    if view.status.terminal:
        message = view.outcome or view.status.value
    elif view.waiting_for is not None:
        w = view.waiting_for
        message = f"waiting for {w.kind}" + (f": {w.question}" if w.question else "")
    else:
        message = f"{done} of {len(view.steps)} node(s) done"
    if view.status == PlanStatus.PARTIAL:
        message = f"partial: {message}"
    return ExecutionStatus(
        execution_id=execution_id,
        status=status_word(view.status),
        current_node=node_id_of(current.id, current.description) if current else None,
        progress=view.progress,
        message=message,
    )
