"""The offline model: a deterministic stand-in for Anthropic when there is no API key.

It implements :class:`~activities.llm.base.ChatModel` like the Anthropic client, so no
caller knows the difference, and answers from the request alone — the same request
always gets the same answer, and every answer says it was produced offline
(``LLMResponse.offline``, model ``offline:<requested model>``, texts that start with
``[offline]``):

- forced ``submit_plan`` (the planner): a linear plan, one step per clause of the task
  (sentences; ``and``, ``then``, ``;``). A clause becomes a tool step when it clearly
  asks for a tool of the ``tool`` enum whose required params it can fill (``fetch`` /
  ``download`` / ``get`` + a URL → ``http_request {url}``, ``wait N seconds`` → ``wait``,
  a tool named with a JSON object of its params); any other clause is an ``llm`` step
  whose prompt is the clause and reads the step before it. The tools, their
  descriptions and params schemas are read from the ``submit_plan`` input schema
  (``steps.items.properties.tool.enum`` and ``$defs["tool_<name>"]``). With repair
  feedback (an ``is_error`` tool result) it fixes its last plan where it can: unknown
  tools and bad params become ``llm`` steps, dependencies that are unknown or form a cycle
  are dropped, missing constraints are listed.
- forced ``choose_option`` (a decision): the option sharing the most words with the rest
  of the request (the first one on a tie).
- forced ``record_verdict`` (an LLM judge): a criterion passes when every quoted term in
  it (``'x'`` or ``"x"``) appears in the subject; one without quoted terms passes with the
  reason ``[offline] not assessed by a model``.
- any other forced tool (``respond`` of an llm step's ``output_schema``…): the smallest
  value valid against the tool's input schema.
- tools offered, not forced: when nothing was called yet and the last user text names an
  offered tool and holds a JSON object, that tool is called with that object (``respond``,
  the final-answer tool of an llm step, is called when no other tool is); otherwise text.
- text: ``[offline] answer to: <the start of the prompt>``.

Usage is counted in words, so metrics have numbers; latency is measured.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from activities.llm.base import LLMRequest, LLMResponse, ToolCall, ToolDef
from contracts.planning import Usage

OFFLINE = "[offline]"
SUBMIT_PLAN = "submit_plan"
CHOOSE_OPTION = "choose_option"
RECORD_VERDICT = "record_verdict"
RESPOND = "respond"
TOOL_DEF_PREFIX = "tool_"  # $defs["tool_<name>"] of the submit_plan schema: a tool's params

ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_ASCII_WORD = re.compile(r"[a-z0-9]+")
_URL = re.compile(r"https?://[^\s<>\"'`]+")


def _wordset(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"\S+", text))


_STOP = _wordset(
    "a an and are as at be by do for from has have how i in into is it its me of on or "
    "our so that the their them then there these this those to was we were what when "
    "which who will with you your all any"
)
# verbs that ask for a URL to be fetched, with a URL from anywhere in the request
_FETCH_VERBS = _wordset(
    "fetch fetches download downloads get gets retrieve retrieves pull pulls curl grab"
)
# weaker verbs: only with a URL in the clause itself
_URL_VERBS = _wordset("check ping call poll visit open hit load request query post send read")
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
_QUOTED = re.compile(
    r"(?<!\w)'([^'\n]+?)'(?!\w)|\"([^\"\n]+?)\"|\u201c([^\u201d\n]+?)\u201d|\u2018([^\u2019\n]+?)\u2019"
)
_APPROVAL = re.compile(
    r"approv|sign[- ]?off|human review|person.{0,20}review|review.{0,20}person", re.I
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
            if not _tool_results(request):
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
        if tool.name == CHOOSE_OPTION:
            args = choose_option(request, tool.input_schema)
            return args, f"chose {args.get('choice')!r}"
        if tool.name == RECORD_VERDICT:
            args = record_verdict(request, tool.input_schema)
            return args, f"{len(args.get('verdicts', []))} verdict(s)"
        return minimal_instance(tool.input_schema), f"answered {tool.name} with a minimal value"


# --- request helpers ---------------------------------------------------------------------


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


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    out = []
    for block in content or []:
        if isinstance(block, dict) and block.get("type") == "text":
            out.append(str(block.get("text", "")))
    return out


def _user_texts(request: LLMRequest) -> list[str]:
    return [
        "\n".join(_texts(m.get("content"))) for m in request.messages if m.get("role") == "user"
    ]


def _tool_results(request: LLMRequest) -> list[dict[str, Any]]:
    found = []
    for m in request.messages:
        content = m.get("content")
        if m.get("role") == "user" and isinstance(content, list):
            found += [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
    return found


def _result_text(block: Mapping[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return "\n".join(_texts(content))
    return str(content or "")


def _tag(text: str, name: str) -> str | None:
    m = re.search(rf"<{name}>\n?(.*?)\n?</{name}>", text, re.S)
    return m.group(1) if m else None


def json_objects(text: str) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """Every JSON object literal in ``text`` as ``(start, end, value)``."""
    decoder = json.JSONDecoder()
    i = text.find("{")
    while i != -1:
        try:
            value, end = decoder.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        if isinstance(value, dict):
            yield i, end, value
            i = text.find("{", end)
        else:
            i = text.find("{", i + 1)


def _named_call(text: str, tools: list[ToolDef]) -> tuple[ToolDef, dict[str, Any]] | None:
    objects = [obj for _, _, obj in json_objects(text)]
    if not objects:
        return None
    for tool in tools:
        if re.search(rf"(?<![\w-]){re.escape(tool.name)}(?![\w-])", text, re.I):
            for obj in objects:
                if _valid(tool.input_schema, obj):
                    return tool, obj
    return None


def _valid(schema: Mapping[str, Any], value: Any) -> bool:
    try:
        return bool(jsonschema.Draft202012Validator(schema).is_valid(value))
    except Exception:  # a schema jsonschema cannot use: do not call with it
        return False


def _text_answer(request: LLMRequest) -> str:
    prompt = " ".join(request.last_user_text().split())
    text = f"{OFFLINE} answer to: {prompt[:200]}{'…' if len(prompt) > 200 else ''}"
    results = _tool_results(request)
    if results:
        last = " ".join(_result_text(results[-1]).split())
        text += f" (tool result: {last[:200]}{'…' if len(last) > 200 else ''})"
    m = re.search(r"feedback[^\n]*\n?(.*)", request.system, re.I | re.S)
    if m:
        said = " ".join(m.group(1).split()) or " ".join(m.group(0).split())
        text += f" (feedback taken into account: {said[:200]})"
    return text


# --- the planner's submit_plan -----------------------------------------------------------


@dataclass(frozen=True)
class _Tool:
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
class _Planning:
    task: str
    context: str
    constraints: list[str]
    inputs: dict[str, Any]
    tools: dict[str, _Tool]
    kinds: list[str]
    # corrections people made to earlier plans: (lesson id, {tool, params: {k: {old, new}}})
    lessons: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _step_schema(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    steps = (schema.get("properties") or {}).get("steps") or {}
    items = steps.get("items") if isinstance(steps, dict) else None
    return items if isinstance(items, dict) else {}


def _planning(request: LLMRequest, schema: Mapping[str, Any]) -> _Planning:
    texts = _user_texts(request)
    source = next((t for t in texts if _tag(t, "task") is not None), texts[-1] if texts else "")
    task = _tag(source, "task")
    if task is None:
        task = source
    context = _tag(source, "context") or ""
    constraints = []
    for line in (_tag(source, "constraints") or "").splitlines():
        line = line.strip()
        if line.startswith("- "):
            constraints.append(line[2:].strip())
    inputs: dict[str, Any] = {}
    raw = _tag(source, "inputs")
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
            tools[name] = _Tool(name, str(d.get("description", "")), d)
    lessons = _lessons(_tag("\n".join(texts), "lessons") or "")
    return _Planning(task, context, constraints, inputs, tools, [str(k) for k in kinds], lessons)


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


def _apply_lessons(steps: list[dict[str, Any]], p: _Planning) -> list[str]:
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


def split_clauses(text: str) -> list[str]:
    """The task's clauses, in order: sentences, split again at ``and``, ``then`` and ``;``.
    URLs, JSON objects and double-quoted text are never split."""
    protected: list[str] = []

    def keep(span: str) -> str:
        protected.append(span)
        return f"\x00{len(protected) - 1}\x00"

    spans: list[tuple[int, int]] = [(s, e) for s, e, _ in json_objects(text)]
    spans += [(m.start(), m.end()) for m in _URL.finditer(text)]
    spans += [(m.start(), m.end()) for m in re.finditer(r"\"[^\"\n]*\"|`[^`\n]*`", text)]
    spans.sort()
    out, pos = [], 0
    for s, e in spans:
        if s < pos:
            continue
        out.append(text[pos:s])
        span = text[s:e]
        if _URL.fullmatch(span):  # a sentence's full stop is not part of its URL
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
        if _WORD.search(part):
            clauses.append(part)
    return clauses


def _safe(text: str) -> str:
    """Text copied into params, where ``{{`` would start a template."""
    while "{{" in text:
        text = text.replace("{{", "{ {")
    return text


def _slug(clause: str, taken: set[str], n: int) -> str:
    words = [w for w in _ASCII_WORD.findall(_URL.sub(" ", clause).lower()) if w not in _STOP]
    base = "-".join(words[:3])[:40].strip("-") or f"step-{n}"
    if not ID_RE.match(base):
        base = f"step-{n}"
    sid, i = base, 2
    while sid in taken:
        sid = f"{base}-{i}"
        i += 1
    taken.add(sid)
    return sid


def _find_url(text: str) -> str | None:
    m = _URL.search(text)
    return m.group(0).rstrip(".,;:!?)") if m else None


def _url_for(clause: str, words: set[str], p: _Planning) -> str | None:
    here = _find_url(clause)
    if here:
        return here
    if not words & _FETCH_VERBS:
        return None
    for key in sorted(p.inputs):
        value = p.inputs[key]
        if re.fullmatch(r"[A-Za-z_]\w*", key) and isinstance(value, str) and _URL.match(value):
            return f"{{{{ inputs.{key} }}}}"
    return _find_url(p.context)


def _tool_step(clause: str, p: _Planning) -> tuple[str, dict[str, Any]] | None:
    words = {w.lower() for w in _WORD.findall(clause)}
    # a tool named in the clause, with its params as a JSON object
    for name, tool in p.tools.items():
        if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", clause, re.I):
            for _, _, obj in json_objects(clause):
                if _valid(tool.schema, obj):
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
                if _valid(tool.schema, wait_params):
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
                if set(tool.required) <= set(params) and _valid(tool.schema, params):
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


def _build(p: _Planning) -> dict[str, Any]:
    clauses = split_clauses(p.task) or [" ".join(p.task.split()) or "do the task"]
    taken: set[str] = set()
    steps: list[dict[str, Any]] = []
    context_used = False
    for n, clause in enumerate(clauses, start=1):
        sid = _slug(clause, taken, n)
        found = _tool_step(clause, p) if "tool" in p.kinds else None
        prev = steps[-1] if steps else None
        step: dict[str, Any] = {"id": sid, "description": clause[:500]}
        if found is not None:
            step.update(kind="tool", tool=found[0], params=found[1])
        else:
            prompt = _safe(clause[:1].upper() + clause[1:])
            source = next((s for s in reversed(steps) if _has_content(s)), None)
            if source is not None:
                prompt += f"\n\nThe result of step {source['id']}:\n" + _output_of(source)
            if p.context.strip() and not context_used:
                prompt += "\n\nContext:\n" + _safe(p.context.strip())
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


def _previous_plan(request: LLMRequest) -> dict[str, Any] | None:
    """The last submit_plan call, when the answer to it was an error (repair feedback)."""
    results = _tool_results(request)
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


_STEP_REF = re.compile(r"steps\s*(?:\.\s*([a-z0-9][a-z0-9_-]*)|\[\s*['\"]([^'\"]+)['\"]\s*\])")
_INPUT_REF = re.compile(r"inputs\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*['\"]([^'\"]+)['\"]\s*\])")
_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}", re.S)


def _refs(pattern: re.Pattern[str], expr: str) -> list[str]:
    return [m.group(1) or m.group(2) for m in pattern.finditer(expr)]


def _repair(previous: dict[str, Any], p: _Planning) -> dict[str, Any]:
    """Fix what can be fixed in an earlier plan (see the module docstring)."""
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
        sid = old if isinstance(old, str) and ID_RE.match(old) and old not in taken else None
        if sid is None:
            sid = _slug(str(step.get("description") or old or ""), taken, n)
        else:
            taken.add(sid)
        if isinstance(old, str) and old not in renamed:
            renamed[old] = sid
        step["id"] = sid
        params = _dict(step.get("params"))
        kind = step.get("kind", "tool")
        tool = step.get("tool")
        if kind not in p.kinds:
            kind = "tool" if tool in p.tools else "llm"
        if kind == "tool" and (tool not in p.tools or not _params_ok(p.tools[tool], params)):
            what = step.get("description") or f"do what {tool!r} would do with {params}"
            kind, params = "llm", {"prompt": _safe(str(what))}
        elif kind == "llm" and not isinstance(params.get("prompt"), str):
            params = {**params, "prompt": _safe(str(step.get("description") or "do this step"))}
        elif kind == "decision":
            options = params.get("options")
            if not (
                isinstance(params.get("question"), str)
                and isinstance(options, list)
                and len(set(map(str, options))) >= 2
            ):
                kind = "llm"
                params = {
                    "prompt": _safe(
                        str(params.get("question") or step.get("description") or "decide")
                    )
                }
        elif kind == "validation":
            checks = params.get("checks")
            if not (isinstance(checks, list) and checks) and not params.get("judge"):
                kind, params = "llm", {"prompt": _safe(str(step.get("description") or "check"))}
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
        for d in _list(step.get("depends_on")):
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
        return _build(p)
    plan["steps"] = steps
    plan["inputs"] = inputs or {}

    met = [
        m
        for m in _list(plan.get("constraints_met"))
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


def _params_ok(tool: _Tool, params: Mapping[str, Any]) -> bool:
    """Valid against the tool's schema, a ``{{ template }}`` string counting as valid."""
    try:
        validator = jsonschema.Draft202012Validator(tool.schema)
        errors = list(validator.iter_errors(params))
    except Exception:
        return True
    return all(isinstance(e.instance, str) and "{{" in e.instance for e in errors)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def offline_plan(request: LLMRequest, schema: Mapping[str, Any]) -> dict[str, Any]:
    """The ``submit_plan`` input the offline model answers with."""
    p = _planning(request, schema)
    previous = _previous_plan(request)
    if previous is not None:
        repaired = _repair(previous, p)
        if repaired != previous:
            return repaired
    return _build(p)


# --- decisions and verdicts -----------------------------------------------------------


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
    text = "\n".join([*_user_texts(request), feedback.group(1) if feedback else ""])
    # the list of options itself says nothing about which one fits
    for label in labels:
        bullet = rf"^[ \t]*(?:[-*\u2022]|\d+[.)])?[ \t]*{re.escape(label)}[ \t]*$"
        text = re.sub(bullet, " ", text, flags=re.I | re.M)
    seen = {w.lower() for w in _WORD.findall(text)}
    best, best_shared = labels[0], list[str]()
    for label in labels:
        shared = sorted(
            {w.lower() for w in _WORD.findall(label)} - _STOP & seen,
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
    texts = _user_texts(request)
    text = texts[-1] if texts else ""
    tagged = _tag(text, "subject")
    if tagged is not None:
        return tagged
    m = re.search(r"(?:^|\n)Subject:[ \t]*\n?(.*)\Z", text, re.S)
    if m:
        return m.group(1)
    for c in criteria:
        text = text.replace(c, " ")
    return text


def record_verdict(request: LLMRequest, schema: Mapping[str, Any]) -> dict[str, Any]:
    """One verdict per criterion: passed when every quoted term is in the subject."""
    item = _prop(schema, "verdicts").get("items") or {}
    criteria = [str(c) for c in (_prop(item, "criterion").get("enum") or [])]
    subject = _subject(request, criteria).casefold()
    verdicts = []
    for c in criteria:
        terms = _quoted_terms(c)
        if not terms:
            passed, reason = True, f"{OFFLINE} not assessed by a model"
        else:
            missing = [t for t in terms if t.casefold() not in subject]
            passed = not missing
            if passed:
                reason = f"{OFFLINE} every quoted term appears in the subject: " + ", ".join(
                    repr(t) for t in terms
                )
            else:
                reason = f"{OFFLINE} missing from the subject: " + ", ".join(
                    repr(t) for t in missing
                )
        verdicts.append({"criterion": c, "passed": passed, "reason": reason})
    out = minimal_instance(schema)
    out["verdicts"] = verdicts
    return out


# --- the smallest valid value of a JSON schema ----------------------------------------

_FORMATS = {
    "date-time": "1970-01-01T00:00:00Z",
    "date": "1970-01-01",
    "time": "00:00:00Z",
    "email": "offline@example.invalid",
    "uri": "https://example.invalid/offline",
    "url": "https://example.invalid/offline",
    "uuid": "00000000-0000-0000-0000-000000000000",
    "hostname": "example.invalid",
    "ipv4": "127.0.0.1",
}


def minimal_instance(schema: Any) -> Any:
    """A small deterministic value valid against ``schema`` (objects: the required
    properties; enums: the first value; strings: ``[offline]``; numbers: within bounds)."""
    root = schema if isinstance(schema, dict) else {}
    value = _instance(schema, root, 0)
    if isinstance(schema, dict) and schema.get("type") == "object" and not isinstance(value, dict):
        return {}
    return value


def _resolve(ref: str, root: Mapping[str, Any]) -> Any:
    if not ref.startswith("#"):
        return {}
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping):
            node = node.get(part, {})
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return {}
    return node


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if k == "properties" and isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k] = {**out[k], **v}
        elif k == "required" and isinstance(out.get(k), list) and isinstance(v, list):
            out[k] = list(dict.fromkeys([*out[k], *v]))
        else:
            out[k] = v
    return out


def _is_valid(value: Any, schema: Any, root: Mapping[str, Any]) -> bool:
    try:
        validator = jsonschema.Draft202012Validator(root)
        return bool(validator.evolve(schema=schema).is_valid(value))
    except Exception:
        return False


def _instance(schema: Any, root: Mapping[str, Any], depth: int) -> Any:
    if schema is True or schema == {} or not isinstance(schema, Mapping):
        return OFFLINE
    if depth > 32:
        return None
    if "$ref" in schema:
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return _instance(_merge(_resolve(str(schema["$ref"]), root), rest), root, depth + 1)
    if "const" in schema:
        return copy.deepcopy(schema["const"])
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return copy.deepcopy(schema["enum"][0])
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, Mapping):
                merged = _merge(merged, part)
        return _instance(merged, root, depth + 1)
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            rest = {k: v for k, v in schema.items() if k != key}
            for branch in branches:
                if not isinstance(branch, Mapping):
                    continue
                candidate = _instance(_merge(rest, branch), root, depth + 1)
                if _is_valid(candidate, schema, root):
                    return candidate
            first = branches[0] if isinstance(branches[0], Mapping) else {}
            return _instance(_merge(rest, first), root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        if "properties" in schema or "required" in schema:
            kind = "object"
        elif "items" in schema or "prefixItems" in schema:
            kind = "array"
        elif any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "multipleOf")):
            kind = "number"
        elif any(k in schema for k in ("minLength", "maxLength", "pattern", "format")):
            kind = "string"
        else:
            return OFFLINE
    if kind == "object":
        return _object(schema, root, depth)
    if kind == "array":
        return _array(schema, root, depth)
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return False
    return None


def _object(schema: Mapping[str, Any], root: Mapping[str, Any], depth: int) -> dict[str, Any]:
    props = _dict(schema.get("properties"))
    extra = schema.get("additionalProperties")
    out: dict[str, Any] = {}
    required = [r for r in schema.get("required") or [] if isinstance(r, str)]
    for name in required:
        sub = props.get(name, extra if isinstance(extra, Mapping) else {})
        out[name] = _instance(sub, root, depth + 1)
    minimum = schema.get("minProperties")
    if isinstance(minimum, int):
        for name, sub in props.items():
            if len(out) >= minimum:
                break
            out.setdefault(name, _instance(sub, root, depth + 1))
    return out


def _array(schema: Mapping[str, Any], root: Mapping[str, Any], depth: int) -> list[Any]:
    prefix = _list(schema.get("prefixItems"))
    items = schema.get("items")
    n = _int(schema.get("minItems")) or 0
    out: list[Any] = []
    for i in range(max(n, 0)):
        sub = prefix[i] if i < len(prefix) else items if items is not None else {}
        value = _instance(sub, root, depth + 1)
        if schema.get("uniqueItems") and value in out:
            value = _vary(value, i)
        out.append(value)
    contains = schema.get("contains")
    if isinstance(contains, Mapping) and not any(_is_valid(v, contains, root) for v in out):
        out.append(_instance(contains, root, depth + 1))
    return out


def _vary(value: Any, i: int) -> Any:
    if isinstance(value, str):
        return f"{value} {i + 1}"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + i
    return value


def _string(schema: Mapping[str, Any]) -> str:
    fmt = schema.get("format")
    value = _FORMATS.get(fmt, OFFLINE) if isinstance(fmt, str) else OFFLINE
    lo = _int(schema.get("minLength")) or 0
    hi = _int(schema.get("maxLength"))
    if len(value) < lo:
        value = value + "." * (lo - len(value))
    if hi is not None and len(value) > hi:
        value = value[:hi]
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            compiled = re.compile(pattern)
        except re.error:
            return value
        if not compiled.search(value):
            for candidate in ("offline", "a", "A", "0", "x", "offline-1", "", "a" * max(lo, 1)):
                ok_len = len(candidate) >= lo and (hi is None or len(candidate) <= hi)
                if ok_len and compiled.search(candidate):
                    return candidate
    return value


def _number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    def num(key: str) -> float | None:
        v = schema.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    lo, hi = num("minimum"), num("maximum")
    xlo, xhi = num("exclusiveMinimum"), num("exclusiveMaximum")
    step = num("multipleOf")

    def fits(v: float) -> bool:
        return (
            (not integer or float(v).is_integer())
            and (lo is None or v >= lo)
            and (hi is None or v <= hi)
            and (xlo is None or v > xlo)
            and (xhi is None or v < xhi)
            and (not step or math.isclose(v / step, round(v / step), abs_tol=1e-9))
        )

    candidates = [0.0]
    candidates += [b for b in (lo, hi) if b is not None]
    if xlo is not None:
        candidates += [xlo + 1, math.floor(xlo) + 1]
    if xhi is not None:
        candidates += [xhi - 1, math.ceil(xhi) - 1]
    lower = max((b for b in (lo, xlo) if b is not None), default=None)
    upper = min((b for b in (hi, xhi) if b is not None), default=None)
    if lower is not None and upper is not None:
        candidates.append((lower + upper) / 2)
    if step:
        candidates += [math.ceil(c / step) * step for c in list(candidates)]
    value = next((c for c in candidates if fits(c)), candidates[0])
    if integer or float(value).is_integer():
        return int(value)
    return value
