"""The offline model: a deterministic stand-in for Anthropic when there is no API key.

It implements :class:`~activities.llm.base.ChatModel` like the Anthropic client, so no
caller knows the difference, and answers from the request alone — the same request
always gets the same answer, and every answer says it was produced offline
(``LLMResponse.offline``, model ``offline:<requested model>``, texts that start with
``[offline]``):

- forced ``submit_plan`` (the planner): a linear plan, one step per clause of the task,
  each a tool step when the clause clearly asks for a tool, else an ``llm`` step
  (:mod:`activities.llm.offline.planner`); with repair feedback (an ``is_error`` tool
  result) its last plan fixed where it can (:mod:`activities.llm.offline.plan_repair`).
- forced ``propose_replan`` (the replanner, ``on_error: replan``): more retries and a
  longer timeout when the error says it is transient, a parameter removed when the error
  names it as unexpected, else ``none`` (:mod:`activities.llm.offline.replan`).
- forced ``write_code`` (a ``code`` step): a program for a sum or a count over the
  input's records, per a field and filtered, shaped like the output schema; anything else
  gets a program that stops with an error saying so (:mod:`activities.llm.offline.code`).
- forced ``choose_option`` (a decision): the option sharing the most words with the rest
  of the request (the first one on a tie).
- forced ``record_verdict`` (an LLM judge): a criterion passes when every quoted term in
  it (``'x'`` or ``"x"``) appears in the subject; one without quoted terms is not judged
  at all (``assessed: false``, ``passed: false``): no model assessed it, so the
  validation step fails it or asks a person, never passes it.
- any other forced tool (``respond`` of an llm step's ``output_schema``…): the smallest
  value valid against the tool's input schema
  (:mod:`activities.llm.offline.schema_instance`).
- tools offered, not forced: when nothing was called yet and the last user text names an
  offered tool and holds a JSON object, that tool is called with that object (``respond``,
  the final-answer tool of an llm step, is called when no other tool is); otherwise text.
- text: ``[offline] answer to: <the start of the prompt>``.

Usage is counted in words, so metrics have numbers; latency is measured.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from activities.llm.base import LLMRequest, LLMResponse, ToolCall, ToolDef
from activities.llm.offline.code import offline_code
from activities.llm.offline.planner import offline_plan
from activities.llm.offline.planning_brief import SUBMIT_PLAN
from activities.llm.offline.reading import (
    OFFLINE,
    STOP,
    WORD,
    json_objects,
    result_text,
    tag,
    tool_results,
    user_texts,
    valid,
)
from activities.llm.offline.replan import offline_replan
from activities.llm.offline.schema_instance import minimal_instance
from contracts.planning import Usage
from contracts.replan import PROPOSE_REPLAN_TOOL

CHOOSE_OPTION = "choose_option"
RECORD_VERDICT = "record_verdict"
RESPOND = "respond"
WRITE_CODE = "write_code"  # activities.llm.code_writer.WRITE_CODE
_QUOTED = re.compile(
    r"(?<!\w)'([^'\n]+?)'(?!\w)|\"([^\"\n]+?)\"|\u201c([^\u201d\n]+?)\u201d|\u2018([^\u2019\n]+?)\u2019"
)


class OfflineModel:
    """Answers every :class:`LLMRequest` deterministically from the request itself."""

    def __init__(self, name: str = "offline"):
        self.name = name

    def __repr__(self) -> str:
        return "OfflineModel()"

    async def complete(self, request: LLMRequest) -> LLMResponse:
        started = time.perf_counter()
        text, calls = self._answer(request)
        content: list[dict[str, Any]] = []
        if text:
            content.append({"type": "text", "text": text})
        content += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in calls
        ]
        out_words = _count_words(text) + sum(
            _count_words(json.dumps(c.input, ensure_ascii=False)) for c in calls
        )
        return LLMResponse(
            model=f"{self.name}:{request.model}",
            text=text,
            tool_calls=calls,
            content=content,
            stop_reason="tool_use" if calls else "end_turn",
            usage=Usage(input_tokens=_input_words(request), output_tokens=max(out_words, 1)),
            latency_ms=(time.perf_counter() - started) * 1000,
            offline=True,
        )

    # --- what to answer -------------------------------------------------------------

    def _answer(self, request: LLMRequest) -> tuple[str, list[ToolCall]]:
        forced = request.forced_tool()
        if forced is not None:
            args, note = self._forced(request, forced)
            return f"{OFFLINE} {note}", [_call(request, forced.name, args)]
        choice = (request.tool_choice or {}).get("type")
        if request.tools and choice != "none":
            if not tool_results(request):
                found = _named_call(request.last_user_text(), request.tools)
                if found is not None:
                    tool, args = found
                    return f"{OFFLINE} calling {tool.name}", [_call(request, tool.name, args)]
            final = next((t for t in request.tools if t.name == RESPOND), None)
            if final is None and choice == "any":
                final = request.tools[0]
            if final is not None:
                args = minimal_instance(final.input_schema)
                return f"{OFFLINE} answering with {final.name}", [_call(request, final.name, args)]
        return _text_answer(request), []

    def _forced(self, request: LLMRequest, tool: ToolDef) -> tuple[dict[str, Any], str]:
        if tool.name == SUBMIT_PLAN:
            plan = offline_plan(request, tool.input_schema)
            return plan, f"plan of {len(plan.get('steps', []))} step(s) made without a model"
        if tool.name == PROPOSE_REPLAN_TOOL:
            args = offline_replan(request)
            return args, f"replan proposal: {args.get('kind')}"
        if tool.name == WRITE_CODE:
            code, note = offline_code(request)
            return {"code": code}, note
        if tool.name == CHOOSE_OPTION:
            args = choose_option(request, tool.input_schema)
            return args, f"chose {args.get('choice')!r}"
        if tool.name == RECORD_VERDICT:
            args = record_verdict(request, tool.input_schema)
            return args, f"{len(args.get('verdicts', []))} verdict(s)"
        return minimal_instance(tool.input_schema), f"answered {tool.name} with a minimal value"


def _count_words(text: str) -> int:
    return len(text.split())


def _input_words(request: LLMRequest) -> int:
    tools = json.dumps([t.model_dump() for t in request.tools], ensure_ascii=False)
    messages = json.dumps(request.messages, ensure_ascii=False, default=str)
    return max(_count_words(request.system) + _count_words(messages) + _count_words(tools), 1)


def _call(request: LLMRequest, name: str, args: dict[str, Any]) -> ToolCall:
    body = json.dumps(request.model_dump(mode="json"), sort_keys=True, default=str)
    digest = hashlib.sha256(f"{name}\n{body}".encode()).hexdigest()[:24]
    return ToolCall(id=f"toolu_offline_{digest}", name=name, input=args)


def _named_call(text: str, tools: list[ToolDef]) -> tuple[ToolDef, dict[str, Any]] | None:
    objects = [obj for _, _, obj in json_objects(text)]
    if not objects:
        return None
    for tool in tools:
        if re.search(rf"(?<![\w-]){re.escape(tool.name)}(?![\w-])", text, re.I):
            for obj in objects:
                if valid(tool.input_schema, obj):
                    return tool, obj
    return None


def _text_answer(request: LLMRequest) -> str:
    prompt = " ".join(request.last_user_text().split())
    text = f"{OFFLINE} answer to: {prompt[:200]}{'…' if len(prompt) > 200 else ''}"
    results = tool_results(request)
    if results:
        last = " ".join(result_text(results[-1]).split())
        text += f" (tool result: {last[:200]}{'…' if len(last) > 200 else ''})"
    m = re.search(r"feedback[^\n]*\n?(.*)", request.system, re.I | re.S)
    if m:
        said = " ".join(m.group(1).split()) or " ".join(m.group(0).split())
        text += f" (feedback taken into account: {said[:200]})"
    return text


def _prop(schema: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    node = props.get(name) if isinstance(props, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def choose_option(request: LLMRequest, schema: Mapping[str, Any]) -> dict[str, Any]:
    """The option with the most words in common with the question, the context and any
    feedback in the system prompt (the first option on a tie)."""
    labels = [str(o) for o in (_prop(schema, "choice").get("enum") or [])]
    base = minimal_instance(schema)
    if not labels:
        base.setdefault("reason", f"{OFFLINE} there were no options to choose from")
        return base
    feedback = re.search(r"feedback[^\n]*\n?(.*)", request.system, re.I | re.S)
    text = "\n".join([*user_texts(request), feedback.group(1) if feedback else ""])
    # the list of options itself says nothing about which one fits
    for label in labels:
        bullet = rf"^[ \t]*(?:[-*\u2022]|\d+[.)])?[ \t]*{re.escape(label)}[ \t]*$"
        text = re.sub(bullet, " ", text, flags=re.I | re.M)
    seen = {w.lower() for w in WORD.findall(text)}
    best, best_shared = labels[0], list[str]()
    for label in labels:
        shared = sorted(
            {w.lower() for w in WORD.findall(label)} - STOP & seen,
            key=lambda w: label.lower().find(w),
        )
        if len(shared) > len(best_shared):
            best, best_shared = label, shared
    if best_shared:
        why = f"it shares the most words with the question and context ({', '.join(best_shared)})"
    else:
        why = "no option shares a word with the question or context, so the first one was taken"
    base.update(choice=best, reason=f"{OFFLINE} chose {best!r}: {why}; no language model was asked")
    return base


def _quoted_terms(criterion: str) -> list[str]:
    return [next(g for g in m.groups() if g) for m in _QUOTED.finditer(criterion)]


def _subject(request: LLMRequest, criteria: list[str]) -> str:
    texts = user_texts(request)
    text = texts[-1] if texts else ""
    tagged = tag(text, "subject")
    if tagged is not None:
        return tagged
    m = re.search(r"(?:^|\n)Subject:[ \t]*\n?(.*)\Z", text, re.S)
    if m:
        return m.group(1)
    for c in criteria:
        text = text.replace(c, " ")
    return text


def record_verdict(request: LLMRequest, schema: Mapping[str, Any]) -> dict[str, Any]:
    """One verdict per criterion: passed when every quoted term is in the subject; a
    criterion without quoted terms is not assessed (``assessed: false``)."""
    item = _prop(schema, "verdicts").get("items") or {}
    criteria = [str(c) for c in (_prop(item, "criterion").get("enum") or [])]
    subject = _subject(request, criteria).casefold()
    verdicts = []
    for c in criteria:
        terms = _quoted_terms(c)
        if not terms:
            verdicts.append(
                {
                    "criterion": c,
                    "passed": False,
                    "assessed": False,
                    "reason": f"{OFFLINE} not assessed: no quoted terms to look for",
                }
            )
            continue
        missing = [t for t in terms if t.casefold() not in subject]
        passed = not missing
        if passed:
            reason = f"{OFFLINE} every quoted term appears in the subject: " + ", ".join(
                repr(t) for t in terms
            )
        else:
            reason = f"{OFFLINE} missing from the subject: " + ", ".join(repr(t) for t in missing)
        verdicts.append({"criterion": c, "passed": passed, "reason": reason})
    out = minimal_instance(schema)
    out["verdicts"] = verdicts
    return out
