"""The replanner (``on_error: replan``): a failed step and its run -> a proposed fix.

:func:`propose` asks a :class:`~activities.llm.base.ChatModel` through one forced tool,
``propose_replan``: a *correction* of the failed step (``updated_step``, as
``apply_correction`` takes it), a *replacement* of it and its not-yet-run dependents
(``replaces`` + ``steps``), or ``none`` with the reason. The user message carries the
failure (error, attempts), the plan document, the tools it uses (with their params
schemas), the other steps' statuses and bounded output previews, what may be replaced,
and the relevant lessons.

Nothing here is trusted: the workflow checks the proposal (:func:`plans.replan.review`)
before anything changes. The replanner neither loads models nor touches the store; the
``propose_replan`` activity (:mod:`activities.planning`) does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from activities.llm.base import ChatModel, LLMRequest, ToolDef
from activities.llm.planner import lessons_block
from contracts.replan import PROPOSE_REPLAN_TOOL, ReplanAnswer, ReplanRequest

SYSTEM = """\
You are the replanner of Plansmith, which runs AI-agent plans durably with people in the \
loop. A step of a running plan failed for good (its retries are spent). Propose a fix by \
calling the propose_replan tool; nothing else is read.

- kind "correction": change the failed step only. updated_step holds the fields to change \
(params merge into the old params: null removes a key). Typical fixes: more retries \
(max_retries, retry_delay_s) for a transient error (timeout, 429, 5xx), a longer \
timeout_s, params the error says are wrong.
- kind "replacement": steps take the place of the failed step and of those of its \
dependents listed in replaceable (list them in replaces). Keep the ids other steps \
depend on. Never reuse the id of a step you do not replace.
- kind "none": you see no fix; say why in reason. A person decides then.

Completed steps never run again and cannot be changed. Every step you write must be \
valid against the tool catalog. Do not remove a person's gate (requires_approval). A \
person may have to accept your proposal; reason is what they read.
"""

PROPOSAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "kind": {"type": "string", "enum": ["correction", "replacement", "none"]},
        "reason": {"type": "string", "description": "why this fixes the failure"},
        "updated_step": {"type": "object", "description": "correction: the fields to change"},
        "replaces": {"type": "array", "items": {"type": "string"}},
        "steps": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["kind", "reason"],
}


def propose_tool() -> ToolDef:
    return ToolDef(
        name=PROPOSE_REPLAN_TOOL,
        description="Propose a correction or a replacement of the failed step, or none.",
        input_schema=PROPOSAL_SCHEMA,
    )


def failure_text(req: ReplanRequest) -> str:
    """The failure as the model reads it (a JSON object in a ``<failure>`` section)."""
    failed = req.plan.step(req.step_id)
    body = {
        "step_id": req.step_id,
        "step": failed.model_dump(mode="json", exclude_defaults=True),
        "error": req.error,
        "attempts": req.attempts,
        "round": req.round,
        "replaceable": req.replaceable,
        "max_new_steps": req.max_new_steps,
        "plan_options": req.plan.options.model_dump(mode="json", exclude_defaults=True),
    }
    plan = req.plan.model_dump(mode="json", exclude_defaults=True)
    tools = {
        name: {"description": t.description, "risk": t.risk, "params_schema": t.params_schema}
        for name, t in sorted(req.tools.items())
    }
    return (
        f"<tools>\n{json.dumps(tools, sort_keys=True, ensure_ascii=False)}\n</tools>\n"
        f"<failure>\n{json.dumps(body, sort_keys=True, ensure_ascii=False)}\n</failure>\n"
        f"<plan>\n{json.dumps(plan, sort_keys=True, ensure_ascii=False)}\n</plan>\n"
        f"<steps>\n{json.dumps(req.steps, sort_keys=True, ensure_ascii=False, default=str)}"
        "\n</steps>"
    )


async def propose(
    req: ReplanRequest,
    *,
    model: ChatModel,
    model_name: str,
    lessons: Sequence[Any] = (),
    max_tokens: int = 4096,
    provider: str | None = None,
) -> ReplanAnswer:
    blocks: list[dict[str, Any]] = []
    if lessons:
        blocks.append({"type": "text", "text": lessons_block(lessons)})
    blocks.append({"type": "text", "text": failure_text(req)})
    tool = propose_tool()
    resp = await model.complete(
        LLMRequest(
            model=model_name,
            system=SYSTEM,
            messages=[{"role": "user", "content": blocks}],
            tools=[tool],
            tool_choice={"type": "tool", "name": tool.name},
            max_tokens=max_tokens,
            provider=provider,
        )
    )
    call = resp.call(PROPOSE_REPLAN_TOOL)
    proposal = call.input if call is not None else {"kind": "none", "reason": resp.text[:500]}
    applied = [f"lesson {x.get('id')}" if isinstance(x, dict) else str(x) for x in lessons]
    return ReplanAnswer(
        proposal=proposal, model=resp.model, offline=resp.offline, lessons_applied=applied
    )
