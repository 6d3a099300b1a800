"""What a ``submit_plan`` request asks the offline planner for.

:func:`read_brief` reads the task, context, constraints, inputs and lessons from the
user's message (its ``<task>``, ``<context>``, ``<constraints>``, ``<inputs>`` and
``<lessons>`` sections) and the tools a step may use from the ``submit_plan`` input
schema (``steps.items.properties.tool.enum`` and ``$defs["tool_<name>"]``).
:func:`previous_plan` finds the plan to repair when the last answer was an error. Making
a plan and repairing one both name steps with :func:`step_id` and copy text into params
with :func:`template_safe`.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from activities.llm.base import LLMRequest
from activities.llm.offline.reading import ASCII_WORD, STOP, URL, tag, tool_results, user_texts

SUBMIT_PLAN = "submit_plan"
TOOL_DEF_PREFIX = "tool_"  # $defs["tool_<name>"] of the submit_plan schema: a tool's params
ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class OfferedTool:
    """A tool a step may use, as the ``submit_plan`` schema describes it."""

    name: str
    description: str
    schema: dict[str, Any]

    @property
    def params(self) -> dict[str, Any]:
        props = self.schema.get("properties")
        return props if isinstance(props, dict) else {}

    @property
    def required(self) -> list[str]:
        req = self.schema.get("required")
        return [r for r in req if isinstance(r, str)] if isinstance(req, list) else []


@dataclass
class PlanningBrief:
    """What the planner was asked for, read from a ``submit_plan`` request."""

    task: str
    context: str
    constraints: list[str]
    inputs: dict[str, Any]
    tools: dict[str, OfferedTool]
    kinds: list[str]
    # corrections people made to earlier plans: (lesson id, {tool, params: {k: {old, new}}})
    lessons: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _step_schema(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    steps = (schema.get("properties") or {}).get("steps") or {}
    items = steps.get("items") if isinstance(steps, dict) else None
    return items if isinstance(items, dict) else {}


def read_brief(request: LLMRequest, schema: Mapping[str, Any]) -> PlanningBrief:
    """The brief of a ``submit_plan`` request whose input schema is ``schema``."""
    texts = user_texts(request)
    source = next((t for t in texts if tag(t, "task") is not None), texts[-1] if texts else "")
    task = tag(source, "task")
    if task is None:
        task = source
    context = tag(source, "context") or ""
    constraints = []
    for line in (tag(source, "constraints") or "").splitlines():
        line = line.strip()
        if line.startswith("- "):
            constraints.append(line[2:].strip())
    inputs: dict[str, Any] = {}
    raw = tag(source, "inputs")
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            inputs = parsed
    props = _step_schema(schema).get("properties") or {}
    names = (props.get("tool") or {}).get("enum") or []
    kinds = (props.get("kind") or {}).get("enum") or ["tool", "llm"]
    defs = schema.get("$defs") or {}
    tools = {}
    for name in names:
        if isinstance(name, str):
            d = defs.get(f"{TOOL_DEF_PREFIX}{name}")
            d = d if isinstance(d, dict) else {"type": "object"}
            tools[name] = OfferedTool(name, str(d.get("description", "")), d)
    lessons = _lessons(tag("\n".join(texts), "lessons") or "")
    return PlanningBrief(
        task, context, constraints, inputs, tools, [str(k) for k in kinds], lessons
    )


_LESSON = re.compile(r"^- \[lesson ([^\]]+)\]")


def _lessons(block: str) -> list[tuple[str, dict[str, Any]]]:
    """The lessons of the prompt that carry an exact change (``  change: {json}``)."""
    out: list[tuple[str, dict[str, Any]]] = []
    current = None
    for line in block.splitlines():
        m = _LESSON.match(line)
        if m:
            current = m.group(1)
            continue
        if current is not None and line.strip().startswith("change:"):
            try:
                change = json.loads(line.split("change:", 1)[1])
            except ValueError:
                continue
            if isinstance(change, dict):
                out.append((current, change))
    return out


def previous_plan(request: LLMRequest) -> dict[str, Any] | None:
    """The last submit_plan call, when the answer to it was an error (repair feedback)."""
    results = tool_results(request)
    if not results or not results[-1].get("is_error"):
        return None
    for m in reversed(request.messages):
        if m.get("role") != "assistant" or not isinstance(m.get("content"), list):
            continue
        for block in m["content"]:
            if (
                isinstance(block, dict)
                and block.get("type") == "tool_use"
                and block.get("name") == SUBMIT_PLAN
                and isinstance(block.get("input"), dict)
            ):
                return copy.deepcopy(block["input"])
        return None
    return None


def template_safe(text: str) -> str:
    """Text copied into params, where ``{{`` would start a template."""
    while "{{" in text:
        text = text.replace("{{", "{ {")
    return text


def step_id(clause: str, taken: set[str], n: int) -> str:
    """An id for step ``n`` from the first words of ``clause``, not in ``taken`` (added)."""
    words = [w for w in ASCII_WORD.findall(URL.sub(" ", clause).lower()) if w not in STOP]
    base = "-".join(words[:3])[:40].strip("-") or f"step-{n}"
    if not ID_RE.fullmatch(base):
        base = f"step-{n}"
    sid, i = base, 2
    while sid in taken:
        sid = f"{base}-{i}"
        i += 1
    taken.add(sid)
    return sid
