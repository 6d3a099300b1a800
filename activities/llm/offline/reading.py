"""How the offline model reads a request, and the label on everything it writes.

Every answer of the offline model starts with :data:`OFFLINE`. The helpers here pull out
of a Messages-shaped request what the offline model answers from: the user's texts,
sections tagged ``<name>…</name>``, tool results, JSON objects written in text, words
and URLs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema

from activities.llm.base import LLMRequest

OFFLINE = "[offline]"
WORD = re.compile(r"[^\W_]+", re.UNICODE)
ASCII_WORD = re.compile(r"[a-z0-9]+")
URL = re.compile(r"https?://[^\s<>\"'`]+")


def wordset(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"\S+", text))


STOP = wordset(
    "a an and are as at be by do for from has have how i in into is it its me of on or "
    "our so that the their them then there these this those to was we were what when "
    "which who will with you your all any"
)


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    out = []
    for block in content or []:
        if isinstance(block, dict) and block.get("type") == "text":
            out.append(str(block.get("text", "")))
    return out


def user_texts(request: LLMRequest) -> list[str]:
    return [
        "\n".join(_texts(m.get("content"))) for m in request.messages if m.get("role") == "user"
    ]


def tool_results(request: LLMRequest) -> list[dict[str, Any]]:
    found = []
    for m in request.messages:
        content = m.get("content")
        if m.get("role") == "user" and isinstance(content, list):
            found += [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
    return found


def result_text(block: Mapping[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return "\n".join(_texts(content))
    return str(content or "")


def tag(text: str, name: str) -> str | None:
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


def valid(schema: Mapping[str, Any], value: Any) -> bool:
    try:
        return bool(jsonschema.Draft202012Validator(schema).is_valid(value))
    except Exception:  # a schema jsonschema cannot use: do not call with it
        return False


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
