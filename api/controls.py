"""The REST verbs of the controls, and their request bodies, from ``CONTROL_MODELS``.

``plans.controls.CONTROL_MODELS`` is the one table of control names and argument models;
this module only says which URL sends which control and derives each route's body from
the control's model: the same fields and constraints, except that ``by`` is optional (the
API key's owner, or ``"api"``) and a step route takes ``step_id`` from its path.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from plans.controls import CONTROL_MODELS

# POST /api/plans/{plan_id}/<verb>
PLAN_ROUTES: dict[str, str] = {
    "approve": "approve",
    "reject": "reject",
    "pause": "pause",
    "resume": "resume",
    "apply-correction": "apply_correction",
    "cancel": "cancel",
    "replan/accept": "accept_replan",
    "replan/reject": "reject_replan",
}
# POST /api/plans/{plan_id}/steps/{step_id}/<verb>
STEP_ROUTES: dict[str, str] = {
    "approve": "approve_step",
    "reject": "reject_step",
    "answer": "answer_clarification",
    "retry": "retry_step",
    "skip": "skip_step",
}
_unrouted = set(CONTROL_MODELS) - set(PLAN_ROUTES.values()) - set(STEP_ROUTES.values())
assert not _unrouted, f"controls without a REST route: {_unrouted}"

SUMMARIES: dict[str, str] = {
    "approve": "Approve the plan (a stale `version` or `digest` is refused)",
    "reject": "Reject the plan before it runs; it ends `rejected`",
    "pause": "Pause: no new step starts; with a `question` the plan waits for an answer",
    "resume": "Resume a paused plan; `feedback` is kept for later steps",
    "apply_correction": "Correct a step that has not completed (plan version + 1)",
    "cancel": "Cancel: running steps are cancelled; the plan ends `cancelled`",
    "approve_step": "Open a step's approval gate",
    "reject_step": "Close a step's gate: the step is skipped with its dependents",
    "answer_clarification": "Answer a step's clarification question",
    "retry_step": "Run a failed or skipped step again (with its skipped dependents)",
    "skip_step": "Skip a failed or waiting step; its dependents go on",
    "accept_replan": "Accept the planner's proposal for a failed step (on_error: replan)",
    "reject_replan": "Reject the planner's proposal: the failure stands, as on_error: ask",
}

EXAMPLES: dict[str, dict[str, Any]] = {
    "approve": {"comment": "looks good", "version": 1},
    "reject": {"reason": "wrong target environment"},
    "pause": {"reason": "maintenance window", "question": "Which region first?"},
    "resume": {"feedback": "start with eu-west"},
    "apply_correction": {
        "step_id": "fetch",
        "correction": {"updated_step": {"params": {"url": "https://example.org/healthz"}}},
    },
    "cancel": {"reason": "superseded by plan release-2-5"},
    "approve_step": {"comment": "go", "version": 1},
    "reject_step": {"reason": "not during business hours"},
    "answer_clarification": {"answer": "eu-west"},
    "retry_step": {},
    "skip_step": {"reason": "done by hand"},
    "accept_replan": {"step_id": "fetch", "comment": "more retries is fine"},
    "reject_replan": {"step_id": "fetch", "reason": "the host is down for the day"},
}

BY_FIELD = Field(
    default=None,
    min_length=1,
    max_length=200,
    description="who sends it; with API keys leave it out (the key's owner is recorded; "
    "another name is refused with 403); without keys it defaults to 'api'",
)


def _body_model(control: str, name: str, drop: set[str]) -> type[BaseModel]:
    source = CONTROL_MODELS[control]
    fields: dict[str, Any] = {"by": (str | None, copy.deepcopy(BY_FIELD))}
    for fname, info in source.model_fields.items():
        if fname == "by" or fname in drop:
            continue
        fields[fname] = (_strict_ints(info.annotation), copy.deepcopy(info))
    example = {k: v for k, v in EXAMPLES.get(control, {}).items() if k not in drop}
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        name,
        __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [example]}),
        __doc__=f"Body of the `{control}` control ({SUMMARIES[control]}).",
        **fields,
    )
    return model


def _refuse_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be an integer, not true or false")
    return value


IntNotBool = Annotated[int, BeforeValidator(_refuse_bool)]


def _strict_ints(annotation: Any) -> Any:
    """``int`` (or ``int | None``) refusing JSON ``true``/``false``, which pydantic would
    take as 1/0 (``{"version": true}`` approved version 1); ``"1"`` from a console form
    still counts."""
    if annotation is int:
        return IntNotBool
    if annotation == int | None:
        return IntNotBool | None
    return annotation


def _camel(control: str) -> str:
    return "".join(part.capitalize() for part in control.split("_"))


PLAN_BODIES: dict[str, type[BaseModel]] = {
    control: _body_model(control, f"{_camel(control)}Body", set())
    for control in PLAN_ROUTES.values()
}
STEP_BODIES: dict[str, type[BaseModel]] = {
    control: _body_model(control, f"{_camel(control)}Body", {"step_id"})
    for control in STEP_ROUTES.values()
}


def body_is_optional(model: type[BaseModel]) -> bool:
    return not any(f.is_required() for f in model.model_fields.values())


def payload(body: BaseModel | None, by: str, step_id: str | None = None) -> dict[str, Any]:
    """The control's argument: what the caller set, plus ``by`` (and the path's step)."""
    data: dict[str, Any] = body.model_dump(mode="json", exclude_unset=True) if body else {}
    data["by"] = by
    if step_id is not None:
        data["step_id"] = step_id
    return data


class ByBody(BaseModel):
    """A body with only ``by`` (resume-from-failure; an execution's stop, pause and resume)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"by": "alice"}]})

    by: str | None = copy.deepcopy(BY_FIELD)
