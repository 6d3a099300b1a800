"""Repairing a plan: what the offline planner does with repair feedback.

Given its last plan and the error it got back, the offline planner fixes what it can:
steps keep only the fields a step has and get valid, unique ids; unknown tools and bad
params become ``llm`` steps, as do decisions and validations missing what they need;
dependencies on unknown or later steps are dropped (so no cycle is left); references in
templates are made reachable or replaced with ``(not available)``; missing constraints
are listed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jsonschema

from activities.llm.offline.planning_brief import (
    ID_RE,
    OfferedTool,
    PlanningBrief,
    step_id,
    template_safe,
)
from activities.llm.offline.reading import OFFLINE, as_dict, as_list

_STEP_REF = re.compile(r"steps\s*(?:\.\s*([a-z0-9][a-z0-9_-]*)|\[\s*['\"]([^'\"]+)['\"]\s*\])")
_INPUT_REF = re.compile(r"inputs\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*['\"]([^'\"]+)['\"]\s*\])")
_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}", re.S)


def _refs(pattern: re.Pattern[str], expr: str) -> list[str]:
    return [m.group(1) or m.group(2) for m in pattern.finditer(expr)]


def repair(previous: dict[str, Any], p: PlanningBrief) -> dict[str, Any] | None:
    """Fix what can be fixed in an earlier plan (see the module docstring); None when
    no step of it is left to keep."""
    plan = dict(previous)
    raw = plan.get("steps")
    steps_in = [s for s in raw if isinstance(s, dict)] if isinstance(raw, list) else []
    inputs = plan.get("inputs") if isinstance(plan.get("inputs"), dict) else {}
    known_inputs = {**(inputs or {}), **p.inputs}
    allowed = set(_STEP_FIELDS)
    taken: set[str] = set()
    renamed: dict[str, str] = {}
    steps: list[dict[str, Any]] = []
    for n, s in enumerate(steps_in, start=1):
        step = {k: v for k, v in s.items() if k in allowed}
        old = step.get("id")
        sid = old if isinstance(old, str) and ID_RE.fullmatch(old) and old not in taken else None
        if sid is None:
            sid = step_id(str(step.get("description") or old or ""), taken, n)
        else:
            taken.add(sid)
        if isinstance(old, str) and old not in renamed:
            renamed[old] = sid
        step["id"] = sid
        params = as_dict(step.get("params"))
        kind = step.get("kind", "tool")
        tool = step.get("tool")
        if kind not in p.kinds:
            kind = "tool" if tool in p.tools else "llm"
        if kind == "tool" and (tool not in p.tools or not _params_ok(p.tools[tool], params)):
            what = step.get("description") or f"do what {tool!r} would do with {params}"
            kind, params = "llm", {"prompt": template_safe(str(what))}
        elif kind == "llm" and not isinstance(params.get("prompt"), str):
            params = {
                **params,
                "prompt": template_safe(str(step.get("description") or "do this step")),
            }
        elif kind == "decision":
            options = params.get("options")
            if not (
                isinstance(params.get("question"), str)
                and isinstance(options, list)
                and len(set(map(str, options))) >= 2
            ):
                kind = "llm"
                params = {
                    "prompt": template_safe(
                        str(params.get("question") or step.get("description") or "decide")
                    )
                }
        elif kind == "validation":
            checks = params.get("checks")
            if not (isinstance(checks, list) and checks) and not params.get("judge"):
                kind = "llm"
                params = {"prompt": template_safe(str(step.get("description") or "check"))}
        step["kind"] = kind
        step["params"] = params
        if kind == "tool":
            step["tool"] = tool
        else:
            step.pop("tool", None)
        steps.append(step)

    # dependencies: only on steps listed earlier (so no cycle), each once
    order = {s["id"]: i for i, s in enumerate(steps)}
    for i, step in enumerate(steps):
        deps: list[str] = []
        for d in as_list(step.get("depends_on")):
            d = renamed.get(d, d) if isinstance(d, str) else d
            if isinstance(d, str) and order.get(d, i) < i and d not in deps:
                deps.append(d)
        step["depends_on"] = deps

    def ancestors(i: int) -> set[str]:
        seen: set[str] = set()
        todo = list(steps[i]["depends_on"])
        while todo:
            d = todo.pop()
            if d not in seen:
                seen.add(d)
                todo += steps[order[d]]["depends_on"]
        return seen

    def fix_expr(expr: str, i: int) -> str | None:
        """The expression with its references made reachable, or None if it cannot be."""
        for ref in _refs(_STEP_REF, expr):
            target = renamed.get(ref, ref)
            if target not in order or order[target] >= i:
                return None
            if target != ref:
                expr = expr.replace(ref, target)
            if target not in ancestors(i):
                steps[i]["depends_on"].append(target)
        for key in _refs(_INPUT_REF, expr):
            if key not in known_inputs:
                return None
        return expr

    def fix_value(value: Any, i: int) -> Any:
        if isinstance(value, str):

            def one(m: re.Match[str]) -> str:
                fixed = fix_expr(m.group(1), i)
                return "(not available)" if fixed is None else f"{{{{ {fixed} }}}}"

            return _TEMPLATE.sub(one, value)
        if isinstance(value, dict):
            return {k: fix_value(v, i) for k, v in value.items()}
        if isinstance(value, list):
            return [fix_value(v, i) for v in value]
        return value

    for i, step in enumerate(steps):
        step["params"] = fix_value(step["params"], i)
        when = step.get("when")
        if isinstance(when, str):
            expr = fix_expr(when, i)
            if expr is None:
                step.pop("when")
            else:
                step["when"] = expr
        if not step["depends_on"]:
            step.pop("depends_on")
    if not steps:
        return None
    plan["steps"] = steps
    plan["inputs"] = inputs or {}

    met = [
        m
        for m in as_list(plan.get("constraints_met"))
        if isinstance(m, dict) and isinstance(m.get("constraint"), str)
    ]
    have = {_norm(m["constraint"]) for m in met}
    for c in p.constraints:
        if _norm(c) not in have:
            met.append(
                {
                    "constraint": c,
                    "how": f"{OFFLINE} noted; the offline model cannot reason about it",
                }
            )
    for m in met:
        if not isinstance(m.get("how"), str) or not m["how"].strip():
            m["how"] = f"{OFFLINE} noted; the offline model cannot reason about it"
    plan["constraints_met"] = met
    return plan


_STEP_FIELDS = (
    "id",
    "kind",
    "description",
    "tool",
    "params",
    "depends_on",
    "when",
    "max_retries",
    "retry_delay_s",
    "backoff",
    "timeout_s",
    "requires_approval",
    "requires_clarification",
    "clarification_question",
    "idempotent",
)


def _params_ok(tool: OfferedTool, params: Mapping[str, Any]) -> bool:
    """Valid against the tool's schema, a ``{{ template }}`` string counting as valid."""
    try:
        validator = jsonschema.Draft202012Validator(tool.schema)
        errors = list(validator.iter_errors(params))
    except Exception:
        return True
    return all(isinstance(e.instance, str) and "{{" in e.instance for e in errors)


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()
