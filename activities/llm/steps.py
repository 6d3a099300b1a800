"""What ``llm``, ``decision`` and ``validation`` steps do inside ``execute_step``.

Every call goes to the worker's model (``ActivityDeps.chat_model``: Anthropic with a key,
the offline stand-in without), passed in by ``execute_step`` with the model selector that
names the model to ask for; every output records the model, tokens in/out, latency and
whether it was produced offline.

An ``llm`` step offered registry tools (``params.tools``) does not run them here: when the
model asks for tools, this returns the calls and the conversation so far, and the workflow
checks each call against the tool's schema, runs the valid ones as child activities
(visible in ``status`` under the step's ``calls``) and comes back with the results.
Structured answers (``params.output_schema``) and decisions are checked here; an answer
that does not fit is sent back to the model with the problem, a bounded number of times.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from activities.llm.base import ChatModel, LLMRequest, LLMResponse, ToolDef
from activities.tools import ToolError, get_tool
from contracts.errors import NoModelFits
from contracts.models import GENERAL, REASONING, ModelSelector
from contracts.planning import Usage

RESPOND = "respond"
CHOOSE = "choose_option"
VERDICT = "record_verdict"
DEFAULT_MAX_INVALID = 3
RESULT_CHARS = 16000  # a tool result fed back to the model is cut to this many characters

STEP_SYSTEM = (
    "You are one step of a plan run by Plansmith, a system that runs AI-agent plans with "
    "people in the loop. Do exactly what the step asks, using only the information given. "
    "Be concise and factual; say so when the information is not enough."
)
DECISION_SYSTEM = (
    "You make one decision in a plan run by Plansmith. Choose exactly one of the options "
    f"with the {CHOOSE} tool and give a short reason a person can check."
)
JUDGE_SYSTEM = (
    "You check the output of a plan step against criteria. For every criterion, say with "
    f"the {VERDICT} tool whether the subject meets it, with a short reason. Be strict: "
    "a criterion the subject does not clearly meet fails. When you cannot judge a "
    "criterion at all, say so with assessed: false."
)
NOT_ASSESSED = "no model assessed this criterion"


@dataclass
class LLMStepResult:
    """A finished answer (``output``), or tool calls the workflow must run first."""

    output: Any = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    conversation: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Meter:
    """Tokens and latency over every model call of one step (tool rounds included)."""

    model: str = ""
    usage: Usage = field(default_factory=Usage)
    latency_ms: float = 0.0
    calls: int = 0
    offline: bool = False

    @classmethod
    def resume(cls, data: dict[str, Any] | None) -> _Meter:
        data = data or {}
        return cls(
            model=data.get("model", ""),
            usage=Usage(**data.get("usage", {})),
            latency_ms=float(data.get("latency_ms", 0.0)),
            calls=int(data.get("model_calls", 0)),
            offline=bool(data.get("offline", False)),
        )

    def add(self, resp: LLMResponse) -> LLMResponse:
        self.model = resp.model
        self.usage = self.usage + resp.usage
        self.latency_ms += resp.latency_ms
        self.calls += 1
        self.offline = self.offline or resp.offline
        return resp

    def record(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "usage": self.usage.model_dump(),
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
            "latency_ms": round(self.latency_ms, 1),
            "model_calls": self.calls,
            "offline": self.offline,
        }


def pick_model(
    params: dict[str, Any], selector: ModelSelector, default_capability: str = "general"
) -> tuple[str, int, str | None]:
    """The model for a step (name, max_tokens, provider): ``params.model`` if given, else
    the first configured model with ``params.capabilities`` (or the default capability)."""
    name = params.get("model")
    caps = params.get("capabilities")
    try:
        cfg = selector.resolve(name, caps, default=default_capability)
    except NoModelFits as e:
        unreachable = any(m.name == name and not selector.reachable(m) for m in selector.models)
        if name and not caps and not unreachable:
            return str(name), 4096, None  # a name the selector does not know: the API decides
        raise ToolError(str(e), retryable=False, kind="NoModelFits") from None
    return cfg.name, cfg.max_tokens, cfg.provider


def decision_capability(selector: ModelSelector) -> str:
    """Decisions go to the reasoning role (a model with ``reasoning``), or the general one
    when no enabled model has it."""
    return REASONING if selector.find([REASONING]) is not None else GENERAL


def _system(base: str, params: dict[str, Any], context: dict[str, Any]) -> str:
    parts = [str(params["system"]) if params.get("system") else base]
    feedback = context.get("feedback") or []
    if feedback:
        parts.append(
            "People's feedback on this plan so far (oldest first):\n"
            + "\n".join(f"- {f}" for f in feedback)
        )
    return "\n\n".join(parts)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _user_prompt(params: dict[str, Any], context: dict[str, Any]) -> str:
    text = _as_text(params.get("prompt", ""))
    if params.get("input") is not None:
        text += "\n\nInput:\n" + _as_text(params["input"])
    if context.get("answer") is not None:
        text += "\n\nA person answered this step's question: " + _as_text(context["answer"])
    return text


def _as_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as the API takes it: a tool's result (any JSON, as the workflow passes
    it) becomes text, cut to :data:`RESULT_CHARS`."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    blocks = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            value = block.get("content")
            if not isinstance(value, str | list) or (
                isinstance(value, list)
                and not all(isinstance(b, dict) and "type" in b for b in value)
            ):
                text = _as_text(value)
                if len(text) > RESULT_CHARS:
                    text = text[:RESULT_CHARS] + f"... [cut: {len(text)} chars in all]"
                block = {**block, "content": text}
        blocks.append(block)
    return {**message, "content": blocks}


def _max_tokens(params: dict[str, Any], default: int) -> int:
    return int(params.get("max_tokens") or min(default, 4096))


def _schema_problems(schema: dict[str, Any], value: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    out = []
    for err in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.path))):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        out.append(f"answer{where}: {err.message}")
    return out


def _send_back(
    conversation: list[dict[str, Any]], resp: LLMResponse, tool: str, problems: list[str]
) -> None:
    """Append the model's answer and the problems with it, for another try."""
    conversation.append(
        {
            "role": "assistant",
            "content": resp.content or [{"type": "text", "text": resp.text or "(no answer)"}],
        }
    )
    text = (
        "That answer cannot be used: "
        + "; ".join(problems)
        + f". Answer again with the {tool} tool."
    )
    results = [
        {"type": "tool_result", "tool_use_id": c.id, "content": text, "is_error": True}
        for c in resp.tool_calls
    ]
    conversation.append({"role": "user", "content": results or text})


async def run_llm(
    params: dict[str, Any], context: dict[str, Any], model: ChatModel, selector: ModelSelector
) -> LLMStepResult:
    """One round of an ``llm`` step (the first, or the next after tool results)."""
    name, limit, provider = pick_model(params, selector)
    schema = params.get("output_schema")
    offered = [_tool_def(t) for t in sorted(set(params.get("tools") or []))]
    if schema:
        offered.append(
            ToolDef(
                name=RESPOND,
                description="Give your final answer as data matching this schema.",
                input_schema=schema,
            )
        )
    if schema and len(offered) == 1:
        choice: dict[str, Any] | None = {"type": "tool", "name": RESPOND}
    else:
        choice = {"type": "auto"} if offered else None
    conversation = [_as_message(m) for m in context.get("conversation") or []]
    if not conversation:
        conversation = [{"role": "user", "content": _user_prompt(params, context)}]
    meter = _Meter.resume(context.get("llm_usage"))
    max_invalid = int(params.get("max_invalid_calls", DEFAULT_MAX_INVALID))
    problems: list[str] = []
    for _ in range(max_invalid + 1):
        resp = meter.add(
            await model.complete(
                LLMRequest(
                    model=name,
                    system=_system(STEP_SYSTEM, params, context),
                    messages=conversation,
                    tools=offered,
                    tool_choice=choice,
                    max_tokens=_max_tokens(params, limit),
                    temperature=params.get("temperature"),
                    provider=provider,
                )
            )
        )
        calls = [c for c in resp.tool_calls if c.name != RESPOND]
        if calls:
            conversation.append({"role": "assistant", "content": resp.content})
            return LLMStepResult(
                calls=[c.model_dump() for c in resp.tool_calls],
                conversation=conversation,
                usage=meter.record(),
            )
        output: dict[str, Any] = {"text": resp.text}
        if schema:
            answer = resp.call(RESPOND)
            if answer is None:
                problems = [f"no {RESPOND} tool call"]
            else:
                problems = _schema_problems(schema, answer.input)
            if problems:
                _send_back(conversation, resp, RESPOND, problems)
                continue
            assert answer is not None
            output["json"] = answer.input
        output.update(meter.record())
        output["tool_calls"] = int(context.get("tool_calls_made", 0))
        return LLMStepResult(output=output, usage=meter.record())
    raise ToolError(
        f"the model's answer did not match output_schema after {max_invalid + 1} tries: "
        + "; ".join(problems),
        retryable=False,
        kind="InvalidModelOutput",
    )


def _tool_def(name: str) -> ToolDef:
    spec = get_tool(name).spec
    return ToolDef(name=spec.name, description=spec.description, input_schema=spec.params_schema)


async def run_decision(
    params: dict[str, Any], context: dict[str, Any], model: ChatModel, selector: ModelSelector
) -> dict[str, Any]:
    """Choose one of ``params.options``; the output is ``{choice, reason, ...}``."""
    options = [str(o) for o in params["options"]]
    name, limit, provider = pick_model(params, selector, decision_capability(selector))
    tool = ToolDef(
        name=CHOOSE,
        description="Record the chosen option and why.",
        input_schema={
            "type": "object",
            "properties": {
                "choice": {"type": "string", "enum": options},
                "reason": {"type": "string", "minLength": 1},
            },
            "required": ["choice", "reason"],
        },
    )
    text = f"Question: {params['question']}\nOptions:\n" + "\n".join(f"- {o}" for o in options)
    if params.get("context") is not None:
        text += "\n\nContext:\n" + _as_text(params["context"])
    if context.get("answer") is not None:
        text += "\n\nA person answered this step's question: " + _as_text(context["answer"])
    conversation: list[dict[str, Any]] = [{"role": "user", "content": text}]
    meter = _Meter()
    problems: list[str] = []
    for _ in range(DEFAULT_MAX_INVALID):
        resp = meter.add(
            await model.complete(
                LLMRequest(
                    model=name,
                    system=_system(DECISION_SYSTEM, params, context),
                    messages=conversation,
                    tools=[tool],
                    tool_choice={"type": "tool", "name": CHOOSE},
                    max_tokens=_max_tokens(params, min(limit, 1024)),
                    temperature=params.get("temperature"),
                    provider=provider,
                )
            )
        )
        call = resp.call(CHOOSE)
        problems = (
            _schema_problems(tool.input_schema, call.input) if call else [f"no {CHOOSE} call"]
        )
        if not problems and call is not None:
            return {
                "choice": call.input["choice"],
                "reason": call.input["reason"],
                "options": options,
                **meter.record(),
            }
        _send_back(conversation, resp, CHOOSE, problems)
    raise ToolError(
        f"the model did not choose one of {options}: " + "; ".join(problems),
        retryable=False,
        kind="InvalidModelOutput",
    )


def judge_tool(criteria: list[str]) -> ToolDef:
    """The tool an LLM judge answers with: one verdict per criterion."""
    return ToolDef(
        name=VERDICT,
        description="Record a verdict for every criterion.",
        input_schema={
            "type": "object",
            "properties": {
                "verdicts": {
                    "type": "array",
                    "minItems": len(criteria),
                    "items": {
                        "type": "object",
                        "properties": {
                            "criterion": {"type": "string", "enum": criteria},
                            "passed": {"type": "boolean"},
                            "reason": {"type": "string"},
                            "assessed": {
                                "type": "boolean",
                                "description": "false when you could not judge this "
                                "criterion (it then fails); true by default",
                            },
                        },
                        "required": ["criterion", "passed", "reason"],
                    },
                }
            },
            "required": ["verdicts"],
        },
    )


def judge_prompt(criteria: list[str], subject: Any) -> str:
    """What an LLM judge is shown: the numbered criteria, then the subject."""
    numbered = "\n".join(f"{i + 1}. {c}" for i, c in enumerate(criteria))
    return f"Criteria:\n{numbered}\n\nSubject:\n{_as_text(subject)}"


async def judge(
    spec: dict[str, Any], context: dict[str, Any], model: ChatModel, selector: ModelSelector
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """An LLM judge: one verdict per criterion, ``[{criterion, passed, assessed, reason}]``.

    A criterion the model gave no verdict for, or said it could not judge
    (``assessed: false``), is unassessed: ``assessed`` false and ``passed`` false. It is
    never passed here; the validation step fails it or asks a person (``on_unassessed``)."""
    criteria = [str(c) for c in spec["criteria"]]
    name, limit, provider = pick_model(spec, selector, "reasoning")
    tool = judge_tool(criteria)
    text = judge_prompt(criteria, spec.get("subject"))
    meter = _Meter()
    resp = meter.add(
        await model.complete(
            LLMRequest(
                model=name,
                system=_system(JUDGE_SYSTEM, {}, context),
                messages=[{"role": "user", "content": text}],
                tools=[tool],
                tool_choice={"type": "tool", "name": VERDICT},
                max_tokens=min(limit, 2048),
                temperature=0,
                provider=provider,
            )
        )
    )
    call = resp.call(VERDICT)
    given: dict[str, dict[str, Any]] = {}
    for v in (call.input.get("verdicts") if call else None) or []:
        if isinstance(v, dict) and v.get("criterion") in criteria:
            given.setdefault(v["criterion"], v)
    verdicts = []
    for c in criteria:
        v = given.get(c)
        if v is None or v.get("assessed") is False:
            why = "the judge gave no verdict" if v is None else str(v.get("reason", ""))
            if resp.offline:
                why += (
                    " (the offline model, used without an API key, checks only criteria "
                    "with quoted terms, 'like this')"
                )
            verdicts.append(
                {
                    "criterion": c,
                    "passed": False,
                    "assessed": False,
                    "reason": f"{NOT_ASSESSED}: {why}" if why else NOT_ASSESSED,
                }
            )
        else:
            verdicts.append(
                {
                    "criterion": c,
                    "passed": v.get("passed") is True,
                    "assessed": True,
                    "reason": str(v.get("reason", "")),
                }
            )
    return verdicts, meter.record()
