"""The planner: a task, its context and constraints → a plan document that validates.

:func:`generate_plan` asks a :class:`~activities.llm.base.ChatModel` for a plan through one
forced tool, ``submit_plan``, whose input schema is the plan document (step ``tool``
limited to the catalog's names, ``kind`` to the step kinds). The answer is checked like
any document (:func:`plans.validation.parse_plan` + :func:`~plans.validation.validate_plan`
against the tool catalog), and every given constraint must be listed in
``constraints_met`` with how the plan meets it. Each problem goes back to the model as an
``is_error`` tool result, ``location: message`` a line, for a bounded number of repair
rounds. An invalid plan is never returned: when the rounds run out,
:class:`PlanningFailed` carries the last problems.

The request is built for prompt caching: the system prompt (what a plan is, the step
kinds, then the tool catalog sorted by name) and the tool definition depend only on the
catalog; the task, its context, constraints, inputs and the lessons learnt from earlier
rejections and corrections come in the user message (lessons as a block of their own).

The planner itself neither loads models nor touches the store; the ``generate_plan``
activity (:mod:`activities.planning`) does and calls this.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from activities.llm.base import ChatModel, LLMRequest, LLMResponse, ToolCall, ToolDef
from contracts.planning import (
    ConstraintMet,
    GeneratedPlan,
    LessonApplied,
    PlanningFailed,
    PlanRequest,
    Usage,
)
from plans.models import ID_PATTERN, Plan, StepKind, ToolSpec
from plans.validation import PlanInvalid, Problem, parse_plan, validate_plan

SUBMIT_PLAN = "submit_plan"
TOOL_DEF_PREFIX = "tool_"  # $defs["tool_<name>"]: a tool's params schema and description
KINDS = [k.value for k in StepKind]
DEFAULT_MAX_TOKENS = 8192


# --- the request -------------------------------------------------------------------------

_SYSTEM = """\
You are the planner of Plansmith, which runs AI-agent plans durably (on Temporal) with \
people in the loop. You turn a task into a plan document: a DAG of steps. Answer by \
calling the submit_plan tool with the whole plan; nothing else is read.

# The plan document
- title: short, for people. description: one or two sentences.
- inputs: an object of values steps read as {{ inputs.<key> }}. The request's own \
inputs (if any) are merged over yours.
- options (all optional):
  - require_approval: true | false | "auto". Leave it out: the planner sets "auto", where \
the plan waits for a person's approval only when a step uses a high- or critical-risk \
tool or is not idempotent. Set true when a constraint asks for a person's approval. \
Never set false, nor auto_approve.
  - on_error: "stop" (default) | "continue" (independent branches go on) | "ask" (a \
person decides) | "replan" (you are asked for a fix of the failed step first; max_replans \
rounds, default 2). default_max_retries (0), default_retry_delay_s (1), step_timeout_s \
(300), total_timeout_s, allow_parallel (true), max_parallel_steps (4).
- steps: a list; each step has
  - id: unique, matching [a-z0-9][a-z0-9_-]{0,63}
  - kind: tool | llm | decision | validation | approval | code
  - description: what the step does, for people
  - params: an object (see the kinds below)
  - depends_on: ids of the steps that must end first. No cycles. Steps without a \
dependency between them may run in parallel.
  - optional: when (a condition, below), max_retries, retry_delay_s, timeout_s, \
requires_approval (a person's gate before this step), requires_clarification with \
clarification_question (a person answers first; the step reads it as {{ answer }}), \
idempotent (false: run exactly once, never retried).

# Step kinds
- tool: "tool" names a tool of the catalog below; params must satisfy that tool's \
params schema. The output is what the tool returns.
- llm: a language model call. params: {prompt (required), system?, input?, \
output_schema? (a JSON Schema the answer must match), tools?: [catalog tool names the \
model may call], model?, capabilities?: ["planning" | "code_generation" | "fast" | \
"general" | ...], temperature?, max_tokens?}. Output: {text, json (when output_schema \
is given), model, input_tokens, output_tokens, ...}.
- decision: the model chooses one option. params: {question, options: [at least two \
labels], context?, branches?: {label: [step ids]}}. Output: {choice, reason}. Steps \
that only make sense for one choice depend on the decision step and are guarded with \
when: "steps.<decision id>.output.choice == 'A'", or are listed under that label in \
branches; a step of a branch not taken is skipped.
- validation: params: {checks: [{name, expr, message?}], judge?: {criteria: [...], \
subject}, on_unassessed?: "fail"|"ask"}. Every expr must be true (an expression over \
earlier outputs); judge asks a model whether subject (usually a template such as \
"{{ steps.draft.output.text }}") meets each criterion. A failed check fails the step; \
so does a criterion no model assessed, unless on_unassessed is "ask" (a person decides).
- approval: a gate where a person approves before dependents run; params: {}.
- code: the code model writes a Python program for the step's description, run in \
the sandbox (no network, no secrets). params: {output_schema (required: a JSON Schema \
the program's printed JSON must match), input? (JSON on its stdin), prompt?, \
max_code_repairs?, timeout_s?, memory_mb?}. Output: {json, code, ...}. Use it for \
computations over data that no tool does.

# Templates and expressions
- Any string in params may hold {{ inputs.<key> }} or {{ steps.<id>.output... }} (e.g. \
{{ steps.fetch.output.body }}, {{ steps.summary.output.text }}). A step may read only \
steps it depends on, directly or through other steps.
- when and checks[].expr are bare expressions (no braces): comparisons, and/or/not, \
literals, attribute and index access, len(), e.g. steps.choose.output.choice == 'left' \
or len(steps.scan.output.body) > 0. Never Python code.

# Rules
- Use only tools of the catalog. When no tool fits, make the step an llm step.
- Keep the plan as small as the task allows; give each step a clear description.
- constraints_met: one entry per given constraint, with the constraint quoted exactly \
and how the plan meets it (or, honestly, why it cannot).
- Lessons from earlier plans, when given, come from people who rejected or corrected \
them: follow those that fit the task.
- If the plan is refused you get every problem as "location: message" (e.g. \
steps[1].depends_on[0]: unknown step 'fetc'); fix them all and call submit_plan again \
with the whole corrected plan.

# Tool catalog (sorted by name)
"""


def _schema_text(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def system_prompt(catalog: Mapping[str, ToolSpec]) -> str:
    """What the model is told once per catalog: stable text, then the tools by name."""
    parts = [_SYSTEM]
    for name in sorted(catalog):
        spec = catalog[name]
        idem = "idempotent" if spec.idempotent else "NOT idempotent (runs exactly once)"
        parts.append(
            f"## {name}\nrisk: {spec.risk}; {idem}\n{spec.description}\n"
            f"params schema: {_schema_text(spec.params_schema)}\n"
        )
    if not catalog:
        parts.append("(no tools are registered: use llm, decision, validation and approval)\n")
    return "\n".join(parts)


def submit_plan_tool(catalog: Mapping[str, ToolSpec]) -> ToolDef:
    """The forced tool; its input schema is the plan document."""
    names = sorted(catalog)
    tool_prop: dict[str, Any] = {
        "type": "string",
        "description": "kind tool only: a tool of the catalog (its params schema is in "
        f"$defs/{TOOL_DEF_PREFIX}<name>)",
    }
    if names:
        tool_prop["enum"] = names
    step = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "pattern": ID_PATTERN},
            "kind": {"type": "string", "enum": KINDS},
            "description": {"type": "string"},
            "tool": tool_prop,
            "params": {
                "type": "object",
                "description": "tool: the tool's params; llm: {prompt, ...}; decision: "
                "{question, options, ...}; validation: {checks, judge?}; approval: {}",
            },
            "depends_on": {"type": "array", "items": {"type": "string"}},
            "when": {"type": "string", "description": "a condition on earlier outputs"},
            "max_retries": {"type": "integer", "minimum": 0, "maximum": 100},
            "retry_delay_s": {"type": "number", "minimum": 0},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0},
            "requires_approval": {"type": "boolean"},
            "requires_clarification": {"type": "boolean"},
            "clarification_question": {"type": "string"},
            "idempotent": {"type": "boolean"},
        },
        "required": ["id", "kind", "params"],
        "additionalProperties": False,
    }
    defs = {}
    for name in names:
        spec = catalog[name]
        defs[f"{TOOL_DEF_PREFIX}{name}"] = {
            **spec.params_schema,
            "description": f"{spec.description} (risk: {spec.risk})",
        }
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 1},
            "description": {"type": "string"},
            "inputs": {"type": "object"},
            "options": {"type": "object"},
            "steps": {"type": "array", "minItems": 1, "items": step},
            "constraints_met": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "constraint": {"type": "string"},
                        "how": {"type": "string"},
                    },
                    "required": ["constraint", "how"],
                },
            },
        },
        "required": ["title", "steps", "constraints_met"],
    }
    if defs:
        schema["$defs"] = defs
    return ToolDef(
        name=SUBMIT_PLAN,
        description="Hand in the whole plan document, and how it meets each constraint.",
        input_schema=schema,
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _lesson_get(lesson: Any, key: str) -> Any:
    if isinstance(lesson, Mapping):
        return lesson.get(key)
    return getattr(lesson, key, None)


def _lesson_id(lesson: Any, i: int) -> int | str:
    found = _lesson_get(lesson, "id")
    return found if isinstance(found, int | str) else str(i + 1)


def lesson_summary(lesson: Any) -> str:
    summary = _lesson_get(lesson, "summary")
    if summary:
        return _one_line(str(summary))
    wrong = _one_line(str(_lesson_get(lesson, "what_wrong") or ""))
    fix = _one_line(str(_lesson_get(lesson, "fix") or ""))
    return f"{wrong}. Do instead: {fix}" if fix else wrong


def lessons_block(lessons: Sequence[Any]) -> str:
    lines = [
        "<lessons>",
        "People rejected or corrected earlier plans; these lessons came out of it. "
        "Follow the ones that fit this task:",
    ]
    for i, lesson in enumerate(lessons):
        lines.append(f"- [lesson {_lesson_id(lesson, i)}] {lesson_summary(lesson)}")
        change = _lesson_get(lesson, "change")
        if change:  # what a person changed, exactly: apply it where it fits
            lines.append("  change: " + json.dumps(change, sort_keys=True, ensure_ascii=False))
    lines.append("</lessons>")
    return "\n".join(lines)


def user_content(req: PlanRequest, lessons: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """The first user message: the lessons (a block of their own), then the request."""
    blocks: list[dict[str, Any]] = []
    if lessons:
        blocks.append({"type": "text", "text": lessons_block(lessons)})
    parts = [f"<task>\n{req.task}\n</task>"]
    if req.context:
        ctx = (
            req.context
            if isinstance(req.context, str)
            else json.dumps(req.context, indent=2, sort_keys=True, ensure_ascii=False)
        )
        parts.append(f"<context>\n{ctx}\n</context>")
    if req.constraints:
        listed = "\n".join(f"- {_one_line(c)}" for c in req.constraints)
        parts.append(f"<constraints>\n{listed}\n</constraints>")
    if req.inputs:
        values = json.dumps(req.inputs, indent=2, sort_keys=True, ensure_ascii=False, default=str)
        parts.append(f"<inputs>\n{values}\n</inputs>\n(steps read these as {{{{ inputs.<key> }}}})")
    parts.append("Make the plan and hand it in with submit_plan.")
    blocks.append({"type": "text", "text": "\n\n".join(parts)})
    return blocks


# --- checking an answer ------------------------------------------------------------------


def _norm(text: str) -> str:
    return _one_line(text).casefold()


def document(plan: Plan) -> dict[str, Any]:
    """The plan as a compact document: defaults left out, each step's id and kind first."""
    doc = plan.model_dump(mode="json", exclude_defaults=True)
    doc["steps"] = [
        {
            "id": s.id,
            "kind": s.kind.value,
            **{k: v for k, v in d.items() if k not in ("id", "kind")},
        }
        for s, d in zip(plan.steps, doc.get("steps", []), strict=True)
    ]
    return doc


def _constraints(
    args: Mapping[str, Any], req: PlanRequest
) -> tuple[list[ConstraintMet], list[Problem]]:
    raw = args.get("constraints_met")
    problems: list[Problem] = []
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        return [], [
            Problem(location="constraints_met", message="must be a list of {constraint, how}")
        ]
    listed: list[tuple[int, str, str]] = []
    for j, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("constraint"), str):
            problems.append(
                Problem(
                    location=f"constraints_met[{j}]",
                    message="each entry is an object {constraint, how}",
                )
            )
            continue
        how = item.get("how")
        listed.append((j, item["constraint"], how if isinstance(how, str) else ""))
    met: list[ConstraintMet] = []
    for c in req.constraints:
        want = _norm(c)
        found = next((x for x in listed if _norm(x[1]) == want), None)
        if found is None:
            found = next(
                (x for x in listed if want in _norm(x[1]) or (_norm(x[1]) and _norm(x[1]) in want)),
                None,
            )
        if found is None:
            problems.append(
                Problem(
                    location="constraints_met",
                    message=f"constraint {c!r} is not listed: quote it and say how the plan "
                    "meets it (or why it cannot)",
                )
            )
        elif not found[2].strip():
            problems.append(
                Problem(
                    location=f"constraints_met[{found[0]}].how",
                    message=f"say how the plan meets the constraint {c!r}",
                )
            )
        else:
            met.append(ConstraintMet(constraint=c, how=found[2].strip()))
    return met, problems


def check_answer(
    call: ToolCall | None, req: PlanRequest, catalog: Mapping[str, ToolSpec]
) -> tuple[dict[str, Any] | None, list[ConstraintMet], list[Problem]]:
    """The validated document and constraints of a ``submit_plan`` call, or its problems."""
    if call is None:
        return (
            None,
            [],
            [
                Problem(
                    location="(answer)",
                    message=f"no {SUBMIT_PLAN} call: hand in the whole plan with the "
                    f"{SUBMIT_PLAN} tool",
                )
            ],
        )
    args = call.input
    problems: list[Problem] = []
    doc: dict[str, Any] = {}
    for key in ("title", "description"):
        if key in args:
            doc[key] = args[key]
    inputs = args.get("inputs")
    if inputs is not None and not isinstance(inputs, dict):
        problems.append(Problem(location="inputs", message="must be an object"))
        inputs = None
    doc["inputs"] = {**(inputs or {}), **req.inputs}
    options = args.get("options")
    if options is not None and not isinstance(options, dict):
        problems.append(Problem(location="options", message="must be an object"))
        options = None
    options = dict(options or {})
    options.setdefault("require_approval", "auto")
    doc["options"] = options
    if "steps" in args:
        doc["steps"] = args["steps"]
    if req.agent_id:
        doc["agent_id"] = req.agent_id
    met, constraint_problems = _constraints(args, req)
    plan: Plan | None = None
    try:
        plan = parse_plan(doc)
    except PlanInvalid as e:
        problems += e.problems
    if plan is not None:
        problems += validate_plan(plan, catalog)
    problems += constraint_problems
    if problems or plan is None:
        return None, met, problems
    return document(plan), met, []


def _assistant_content(resp: LLMResponse) -> list[dict[str, Any]]:
    if resp.content:
        return resp.content
    content: list[dict[str, Any]] = []
    if resp.text:
        content.append({"type": "text", "text": resp.text})
    content += [
        {"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in resp.tool_calls
    ]
    return content or [{"type": "text", "text": "(no answer)"}]


def feedback(resp: LLMResponse, problems: Sequence[Problem]) -> dict[str, Any]:
    """The user message that sends the problems back (a tool result per tool call)."""
    listed = "\n".join(f"- {p}" for p in problems)
    text = (
        f"The plan was refused ({len(problems)} problem(s)):\n{listed}\n"
        f"Fix every problem and call {SUBMIT_PLAN} again with the whole corrected plan."
    )
    results = []
    for c in resp.tool_calls:
        content = (
            text
            if c.name == SUBMIT_PLAN
            else f"there is no tool {c.name!r} here; hand in the plan with {SUBMIT_PLAN}"
        )
        results.append(
            {"type": "tool_result", "tool_use_id": c.id, "content": content, "is_error": True}
        )
    return {"role": "user", "content": results or text}


async def generate_plan(
    req: PlanRequest,
    *,
    model: ChatModel,
    model_name: str,
    catalog: Mapping[str, ToolSpec],
    lessons: Sequence[Any] = (),
    max_tokens: int = DEFAULT_MAX_TOKENS,
    provider: str | None = None,
) -> GeneratedPlan:
    """A plan for ``req`` that passes full validation against ``catalog``, or
    :class:`PlanningFailed`. ``lessons`` (dicts with id, summary, what_wrong, fix…) go
    into the prompt; model errors (:class:`~activities.llm.base.LLMError`) propagate."""
    system = system_prompt(catalog)
    tools = [submit_plan_tool(catalog)]
    messages: list[dict[str, Any]] = [{"role": "user", "content": user_content(req, lessons)}]
    usage = Usage()
    latency = 0.0
    offline = False
    answered_by = model_name
    repairs: list[list[str]] = []
    rounds = 0
    while True:
        rounds += 1
        resp = await model.complete(
            LLMRequest(
                model=model_name,
                system=system,
                messages=messages,
                tools=tools,
                tool_choice={"type": "tool", "name": SUBMIT_PLAN},
                max_tokens=max_tokens,
                cache=True,
                provider=provider,
            )
        )
        usage = usage + resp.usage
        latency += resp.latency_ms
        offline = offline or resp.offline
        answered_by = resp.model or answered_by
        doc, met, problems = check_answer(resp.call(SUBMIT_PLAN), req, catalog)
        if doc is not None:
            return GeneratedPlan(
                plan=doc,
                constraints=met,
                rounds=rounds,
                repairs=repairs,
                model=answered_by,
                usage=usage,
                latency_ms=round(latency, 1),
                offline=offline,
                lessons_applied=[
                    LessonApplied(id=_lesson_id(lesson, i), summary=lesson_summary(lesson))
                    for i, lesson in enumerate(lessons)
                ],
            )
        if resp.stop_reason == "max_tokens":
            problems.append(
                Problem(
                    location="(answer)",
                    message=f"the answer was cut off at {max_tokens} tokens: make the plan "
                    "smaller (fewer, simpler steps)",
                )
            )
        if rounds > req.max_repair_rounds:
            raise PlanningFailed(problems, rounds, repairs, answered_by)
        repairs.append([str(p) for p in problems])
        messages = [
            *messages,
            {"role": "assistant", "content": _assistant_content(resp)},
            feedback(resp, problems),
        ]
