"""What a ``code`` step's model call does inside ``execute_step``: the code model (the
selector's ``code_generation`` role, :meth:`contracts.models.ModelSelector.code_model`)
writes Python for the step.

The call forces the tool ``write_code`` whose input is ``{"code": "..."}``. The prompt
gives the step's description (and ``params.prompt``), its ``input`` (given to the code as
JSON on stdin) and its ``output_schema`` (the code prints one JSON value on stdout that
must match it). For a repair, the earlier attempts and what went wrong with each (an
exception, a timeout, output that did not match the schema) come with the prompt
(``context["code_attempts"]``, kept by the workflow).

The code is model output, hostile by assumption: this module never runs it (the workflow
runs it with the ``python`` tool, in the sandbox, on the ``sandbox`` queue); it only checks
that it is a non-empty string of at most :data:`MAX_CODE_CHARS` characters, and asks again
(a bounded number of times) when it is not.
"""

from __future__ import annotations

import json
from typing import Any

from activities.llm.base import ChatModel, LLMRequest, ToolDef
from activities.llm.steps import DEFAULT_MAX_INVALID, _Meter, _send_back, _system, pick_model
from activities.tools import ToolError
from contracts.models import CODE, ModelSelector

WRITE_CODE = "write_code"
MAX_CODE_CHARS = 20_000  # generated code above this is refused and asked again
PROMPT_CHARS = 8_000  # an input, a schema or an earlier error is cut to this in the prompt

CODE_SYSTEM = (
    "You write one Python 3 program for a step of a plan run by Plansmith. The program "
    "runs in a sandbox: no network, no secrets, a read-only system, the standard library "
    "only, strict time and memory limits. It reads its input as JSON from stdin "
    "(json.load(sys.stdin)) and prints exactly one JSON value on stdout (json.dumps) that "
    "must match the output schema; nothing else goes to stdout. Give the program with the "
    f"{WRITE_CODE} tool, as the code only, without explanations."
)

WRITE_CODE_TOOL = ToolDef(
    name=WRITE_CODE,
    description="Give the complete Python 3 program for the step.",
    input_schema={
        "type": "object",
        "properties": {
            "code": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_CODE_CHARS,
                "description": "the whole program: reads JSON on stdin, prints JSON on stdout",
            }
        },
        "required": ["code"],
    },
)


def _cut(text: str, limit: int = PROMPT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [cut: {len(text)} chars in all]"


def _json(value: Any) -> str:
    return _cut(json.dumps(value, ensure_ascii=False, sort_keys=True, default=str, indent=1))


def code_prompt(params: dict[str, Any], context: dict[str, Any]) -> str:
    """What the code model is asked: the task, the input, the schema, earlier attempts."""
    parts = [f"Description: {context.get('description') or ''}".rstrip()]
    if params.get("prompt"):
        parts.append(f"Instructions: {params['prompt']}")
    if params.get("input") is not None:
        parts.append("Input (JSON on stdin):\n" + _json(params["input"]))
    else:
        parts.append("Input: none (stdin is empty)")
    parts.append(
        "Output schema (print one JSON value matching it):\n" + _json(params["output_schema"])
    )
    for n, attempt in enumerate(context.get("code_attempts") or [], start=1):
        parts.append(
            f"Attempt {n} failed.\nCode:\n{_cut(str(attempt.get('code', '')))}\n"
            f"Error:\n{_cut(str(attempt.get('error', '')), 2000)}"
        )
    if context.get("code_attempts"):
        parts.append("Write a corrected program.")
    return "\n\n".join(parts)


def code_problems(value: Any) -> list[str]:
    """What is wrong with a ``write_code`` input (empty: usable)."""
    if not isinstance(value, dict):
        return [f"no {WRITE_CODE} call"]
    code = value.get("code")
    if not isinstance(code, str) or not code.strip():
        return ["code: a non-empty string is required"]
    if len(code) > MAX_CODE_CHARS:
        return [f"code: {len(code)} characters, above the limit of {MAX_CODE_CHARS}"]
    if "\x00" in code:
        return ["code: holds a NUL character"]
    return []


async def write_code(
    params: dict[str, Any], context: dict[str, Any], model: ChatModel, selector: ModelSelector
) -> dict[str, Any]:
    """One ``write_code`` call (asked again when the answer is unusable): the output is
    ``{code, model, usage...}``; the code is not run here."""
    name, limit, provider = pick_model(params, selector, CODE)
    conversation: list[dict[str, Any]] = [{"role": "user", "content": code_prompt(params, context)}]
    meter = _Meter()
    problems: list[str] = []
    for _ in range(DEFAULT_MAX_INVALID):
        resp = meter.add(
            await model.complete(
                LLMRequest(
                    model=name,
                    system=_system(CODE_SYSTEM, {}, context),
                    messages=conversation,
                    tools=[WRITE_CODE_TOOL],
                    tool_choice={"type": "tool", "name": WRITE_CODE},
                    max_tokens=int(params.get("max_tokens") or min(limit, 8192)),
                    temperature=params.get("temperature"),
                    provider=provider,
                )
            )
        )
        call = resp.call(WRITE_CODE)
        problems = code_problems(call.input if call else None)
        if not problems and call is not None:
            return {"code": call.input["code"], **meter.record()}
        _send_back(conversation, resp, WRITE_CODE, problems)
    raise ToolError(
        f"the code model gave no usable code after {DEFAULT_MAX_INVALID} tries: "
        + "; ".join(problems),
        retryable=False,
        kind="InvalidModelOutput",
    )
