"""The offline planner: how the offline model turns a task into a plan document.

A linear plan, one step per clause of the task (sentences; ``and``, ``then``, ``;``). A
clause becomes a tool step when it clearly asks for a tool of the ``tool`` enum whose
required params it can fill (``fetch`` / ``download`` / ``get`` + a URL →
``http_request {url}``, ``wait N seconds`` → ``wait``, a tool named with a JSON object of
its params); any other clause is an ``llm`` step whose prompt is the clause and reads the
step before it. A lesson people taught with an exact change is applied wherever the same
tool gets the same value again. A constraint about approval sets ``require_approval``;
the others are noted. With repair feedback the last plan is fixed instead, where it can
be (:mod:`activities.llm.offline.plan_repair`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from activities.llm.base import LLMRequest
from activities.llm.offline.plan_repair import repair
from activities.llm.offline.planning_brief import (
    PlanningBrief,
    previous_plan,
    read_brief,
    step_id,
    template_safe,
)
from activities.llm.offline.reading import OFFLINE, URL, WORD, json_objects, valid, wordset

# verbs that ask for a URL to be fetched, with a URL from anywhere in the request
_FETCH_VERBS = wordset(
    "fetch fetches download downloads get gets retrieve retrieves pull pulls curl grab"
)
# weaker verbs: only with a URL in the clause itself
_URL_VERBS = wordset("check ping call poll visit open hit load request query post send read")
_METHODS = {
    "post": "POST",
    "send": "POST",
    "put": "PUT",
    "patch": "PATCH",
    "head": "HEAD",
}
_WAIT = re.compile(
    r"\b(?:wait|sleep|pause)\b\D{0,20}?(\d+(?:\.\d+)?)\s*"
    r"(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?)\b",
    re.I,
)
_SPLIT = re.compile(
    r"[.!?]+(?=\s|$)|;|\n+|,?\s+and\s+then\s+|,?\s+then\s+|,\s+and\s+|\s+and\s+",
    re.I,
)
_LEADING = re.compile(
    r"^(?:(?:first|firstly|then|next|finally|lastly|afterwards|after\s+that|and|also)\b[,:]?\s*)+",
    re.I,
)
_APPROVAL = re.compile(
    r"approv|sign[- ]?off|human review|person.{0,20}review|review.{0,20}person", re.I
)


def offline_plan(request: LLMRequest, schema: Mapping[str, Any]) -> dict[str, Any]:
    """The ``submit_plan`` input the offline model answers with."""
    p = read_brief(request, schema)
    previous = previous_plan(request)
    if previous is not None:
        repaired = repair(previous, p)
        if repaired is not None and repaired != previous:
            return repaired
    return _build(p)


def split_clauses(text: str) -> list[str]:
    """The task's clauses, in order: sentences, split again at ``and``, ``then`` and ``;``.
    URLs, JSON objects and double-quoted text are never split."""
    protected: list[str] = []

    def keep(span: str) -> str:
        protected.append(span)
        return f"\x00{len(protected) - 1}\x00"

    spans: list[tuple[int, int]] = [(s, e) for s, e, _ in json_objects(text)]
    spans += [(m.start(), m.end()) for m in URL.finditer(text)]
    spans += [(m.start(), m.end()) for m in re.finditer(r"\"[^\"\n]*\"|`[^`\n]*`", text)]
    spans.sort()
    out, pos = [], 0
    for s, e in spans:
        if s < pos:
            continue
        out.append(text[pos:s])
        span = text[s:e]
        if URL.fullmatch(span):  # a sentence's full stop is not part of its URL
            stripped = span.rstrip(".,;:!?)")
            out.append(keep(stripped))
            out.append(span[len(stripped) :])
        else:
            out.append(keep(span))
        pos = e
    out.append(text[pos:])
    masked = "".join(out)

    clauses = []
    for part in _SPLIT.split(masked):
        part = re.sub(r"\x00(\d+)\x00", lambda m: protected[int(m.group(1))], part)
        part = _LEADING.sub("", part.strip()).strip(" \t,:-")
        if WORD.search(part):
            clauses.append(part)
    return clauses


def _find_url(text: str) -> str | None:
    m = URL.search(text)
    return m.group(0).rstrip(".,;:!?)") if m else None


def _url_for(clause: str, words: set[str], p: PlanningBrief) -> str | None:
    here = _find_url(clause)
    if here:
        return here
    if not words & _FETCH_VERBS:
        return None
    for key in sorted(p.inputs):
        value = p.inputs[key]
        if re.fullmatch(r"[A-Za-z_]\w*", key) and isinstance(value, str) and URL.match(value):
            return f"{{{{ inputs.{key} }}}}"
    return _find_url(p.context)


def _tool_step(clause: str, p: PlanningBrief) -> tuple[str, dict[str, Any]] | None:
    words = {w.lower() for w in WORD.findall(clause)}
    # a tool named in the clause, with its params as a JSON object
    for name, tool in p.tools.items():
        if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", clause, re.I):
            for _, _, obj in json_objects(clause):
                if valid(tool.schema, obj):
                    return name, obj
    # wait N seconds
    m = _WAIT.search(clause)
    if m:
        for tool in p.tools.values():
            if "seconds" in tool.params and ("wait" in tool.name or "sleep" in tool.name):
                unit = m.group(2).lower()
                factor = (
                    0.001
                    if unit.startswith("ms") or unit.startswith("milli")
                    else 3600
                    if unit.startswith("h")
                    else 60
                    if unit.startswith("m")
                    else 1
                )
                seconds = float(m.group(1)) * factor
                value: float | int = int(seconds) if seconds.is_integer() else seconds
                wait_params = {"seconds": value}
                if valid(tool.schema, wait_params):
                    return tool.name, wait_params
    # fetch / download / get + a URL
    if words & (_FETCH_VERBS | _URL_VERBS):
        url = _url_for(clause, words, p)
        if url:
            for tool in sorted(p.tools.values(), key=lambda t: ("http" not in t.name, t.name)):
                if "url" not in tool.params:
                    continue
                if "http" not in f"{tool.name} {tool.description}".lower():
                    continue
                params: dict[str, Any] = {"url": url}
                method = next((_METHODS[w] for w in _METHODS if w in words), None)
                if method and "method" in tool.params:
                    params["method"] = method
                if set(tool.required) <= set(params) and valid(tool.schema, params):
                    return tool.name, params
    return None


def _has_content(step: Mapping[str, Any]) -> bool:
    """An llm step, or a tool step that fetches something (a wait has nothing to read)."""
    return step.get("kind") == "llm" or "http" in str(step.get("tool", ""))


def _output_of(step: Mapping[str, Any]) -> str:
    """A template for the useful part of an earlier step's output."""
    sid = step["id"]
    if step.get("kind") == "llm":
        return f"{{{{ steps.{sid}.output.text }}}}"
    if step.get("kind") == "tool" and "http" in str(step.get("tool", "")):
        return f"{{{{ steps.{sid}.output.body }}}}"
    return f"{{{{ steps.{sid}.output }}}}"


def _apply_lessons(steps: list[dict[str, Any]], p: PlanningBrief) -> list[str]:
    """Make the corrections people made before wherever the same tool is used with the
    same value again; the ids of the lessons applied."""
    applied: list[str] = []
    for step in steps:
        params = step.get("params")
        if step.get("kind") != "tool" or not isinstance(params, dict):
            continue
        for lesson_id, change in p.lessons:
            if change.get("tool") != step.get("tool"):
                continue
            hit = False
            for key, c in (change.get("params") or {}).items():
                if not isinstance(c, dict):
                    continue
                old, new, cur = c.get("old"), c.get("new"), params.get(key)
                if cur is not None and cur == old:
                    params[key], hit = new, True
                elif (
                    isinstance(cur, str)
                    and isinstance(old, str)
                    and isinstance(new, str)
                    and old
                    and old in cur
                ):
                    params[key], hit = cur.replace(old, new), True
            if hit:
                step["description"] = f"{step.get('description', '')} (lesson {lesson_id})".strip()
                if lesson_id not in applied:
                    applied.append(lesson_id)
    return applied


def _build(p: PlanningBrief) -> dict[str, Any]:
    clauses = split_clauses(p.task) or [" ".join(p.task.split()) or "do the task"]
    taken: set[str] = set()
    steps: list[dict[str, Any]] = []
    context_used = False
    for n, clause in enumerate(clauses, start=1):
        sid = step_id(clause, taken, n)
        found = _tool_step(clause, p) if "tool" in p.kinds else None
        prev = steps[-1] if steps else None
        step: dict[str, Any] = {"id": sid, "description": clause[:500]}
        if found is not None:
            step.update(kind="tool", tool=found[0], params=found[1])
        else:
            prompt = template_safe(clause[:1].upper() + clause[1:])
            source = next((s for s in reversed(steps) if _has_content(s)), None)
            if source is not None:
                prompt += f"\n\nThe result of step {source['id']}:\n" + _output_of(source)
            if p.context.strip() and not context_used:
                prompt += "\n\nContext:\n" + template_safe(p.context.strip())
                context_used = True
            step.update(kind="llm", params={"prompt": prompt})
        if prev is not None:
            step["depends_on"] = [prev["id"]]
        steps.append(step)
    applied = _apply_lessons(steps, p)
    first_line = " ".join(p.task.split())
    title = first_line[:80] + ("…" if len(first_line) > 80 else "")
    options: dict[str, Any] = {}
    met = []
    for c in p.constraints:
        if _APPROVAL.search(c):
            options["require_approval"] = True
            how = (
                f"{OFFLINE} options.require_approval is true: the plan waits for a person's "
                "approval before any step runs"
            )
        else:
            how = f"{OFFLINE} noted; the offline model cannot reason about it"
        met.append({"constraint": c, "how": how})
    return {
        "title": title[:1].upper() + title[1:] if title else "Offline plan",
        "description": f"{OFFLINE} Made without a language model (no ANTHROPIC_API_KEY): "
        "one step per clause of the task, in order; a clause becomes a tool step when it "
        "clearly asks for a tool, else an llm step."
        + (f" Corrections from lessons {', '.join(applied)} applied." if applied else ""),
        "inputs": dict(p.inputs),
        "options": options,
        "steps": steps,
        "constraints_met": met,
    }
