"""The offline model's answer to ``write_code`` (a ``code`` step): a small program for the
simple descriptions it can read, always the same for the same request.

It understands a sum or a count over the records of the input, optionally per a field
and filtered on one field's value::

    Sum of amount per region where status is paid
    Total amount by customer
    Count orders per status where region is eu
    Count of records

The records are the input when it is a list, else the first list among the input
object's values. The printed value takes the shape of the step's ``output_schema``: an
object property of the schema gets the per-group values, a number or integer property
the overall value, an array property the sorted group names (a schema that is itself a
number, an object or an array gets that value alone).

Anything else gets a program that stops with an error saying the offline model cannot
write code for it: the step fails after its repairs, with that message, instead of
printing a made-up answer.
"""

from __future__ import annotations

import json
import re
from typing import Any

from activities.llm.base import LLMRequest

DESCRIPTION = re.compile(r"^Description:[ \t]*(.*)$", re.M)
INSTRUCTIONS = re.compile(r"^Instructions:[ \t]*(.*)$", re.M)
SCHEMA = re.compile(
    r"^Output schema \(print one JSON value matching it\):\n(.*?)(?:\n\n|\Z)", re.M | re.S
)
_SUM = re.compile(r"\b(?:sum|total)s?\s+(?:of\s+)?(?:the\s+)?([a-z_]\w*)", re.I)
_COUNT = re.compile(r"\b(?:count|number)\b", re.I)
_PER = re.compile(r"\b(?:per|by|for each|grouped by)\s+([a-z_]\w*)", re.I)
_WHERE = re.compile(
    r"\b(?:where|with|whose)\s+([a-z_]\w*)\s+(?:is|=|==|equals)\s+['\"]?([\w.-]+)['\"]?", re.I
)


def _first_prompt(request: LLMRequest) -> str:
    for m in request.messages:
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return str(m["content"])
    return request.last_user_text()


def _schema(prompt: str) -> dict[str, Any]:
    found = SCHEMA.search(prompt)
    if found is None:
        return {}
    try:
        value = json.loads(found.group(1))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _types(schema: Any) -> set[str]:
    if not isinstance(schema, dict):
        return set()
    t = schema.get("type")
    return {t} if isinstance(t, str) else {str(x) for x in t} if isinstance(t, list) else set()


def _shape(schema: dict[str, Any]) -> str:
    """The expression the program prints, from ``groups`` and ``overall``."""
    props = schema.get("properties")
    if isinstance(props, dict) and props:
        parts = []
        for name, sub in props.items():
            types = _types(sub)
            if "object" in types:
                parts.append(f"{name!r}: groups")
            elif types & {"number", "integer"}:
                parts.append(f"{name!r}: overall")
            elif "array" in types:
                parts.append(f"{name!r}: sorted(groups)")
        return "{" + ", ".join(parts) + "}"
    types = _types(schema)
    if types & {"number", "integer"}:
        return "overall"
    if "array" in types:
        return "sorted(groups)"
    return "groups"


def offline_code(request: LLMRequest) -> tuple[str, str]:
    """The program for the request's description and a note on what it does."""
    prompt = _first_prompt(request)
    desc = " ".join(
        m.group(1) for m in (DESCRIPTION.search(prompt), INSTRUCTIONS.search(prompt)) if m
    )
    summed = _SUM.search(desc)
    counting = _COUNT.search(desc) is not None and summed is None
    if summed is None and not counting:
        return _cannot(desc), "no code: the description is beyond the offline model"
    per = _PER.search(desc)
    where = _WHERE.search(desc)
    lines = [
        "import json",
        "import sys",
        "",
        "data = json.load(sys.stdin)",
        "rows = data if isinstance(data, list) else next(",
        "    (v for v in (data or {}).values() if isinstance(v, list)), []",
        ")",
        "rows = [r for r in rows if isinstance(r, dict)]",
    ]
    if where:
        lines.append(
            f"rows = [r for r in rows if str(r.get({where.group(1)!r})) == {where.group(2)!r}]"
        )
    lines.append("groups = {}")
    lines.append("for r in rows:")
    key = f"str(r.get({per.group(1)!r}))" if per else "'all'"
    lines.append(f"    key = {key}")
    if summed:
        field = summed.group(1)
        lines.append(
            f"    groups[key] = round(groups.get(key, 0) + float(r.get({field!r}) or 0), 2)"
        )
        lines.append("overall = round(sum(groups.values()), 2)")
    else:
        lines.append("    groups[key] = groups.get(key, 0) + 1")
        lines.append("overall = sum(groups.values())")
    lines.append(f"print(json.dumps({_shape(_schema(prompt))}))")
    what = f"sum of {summed.group(1)}" if summed else "count"
    if per:
        what += f" per {per.group(1)}"
    if where:
        what += f" where {where.group(1)} is {where.group(2)}"
    return "\n".join(lines) + "\n", f"wrote code: {what}"


def _cannot(desc: str) -> str:
    message = (
        "the offline model (no API key) writes code only for a sum or a count over the "
        f"input's records, optionally per a field; not for: {desc[:200]}"
    )
    return f"raise SystemExit({message!r})\n"
