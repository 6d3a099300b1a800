"""The plan page's version history: each correction's diff (``PlanVersion.diff``, step ->
field -> ``{old, new}``) as rows a person reads, one per changed value.

A field whose old and new values are both objects (``params``) is opened key by key, so
a changed URL reads ``params.url: old -> new`` rather than two whole parameter blocks.
Values are JSON text (the templates escape them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_VALUE_CHARS = 2000  # characters of one old or new value
MAX_DEPTH = 4  # objects nested deeper are shown whole
MAX_ROWS = 200  # rows of one version
MISSING = object()


@dataclass(frozen=True)
class FieldChange:
    step_id: str
    field: str
    kind: str  # "changed", "added" or "removed"
    old: str | None
    new: str | None


def shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + " … (cut)"


def _rows(step_id: str, path: str, old: Any, new: Any, depth: int, out: list[FieldChange]) -> None:
    if isinstance(old, dict) and isinstance(new, dict) and depth < MAX_DEPTH:
        for key in sorted(set(old) | set(new), key=str):
            a, b = old.get(key, MISSING), new.get(key, MISSING)
            if a != b:
                _rows(step_id, f"{path}.{key}", a, b, depth + 1, out)
        return
    if old is MISSING or (old is None and depth == 0):
        out.append(FieldChange(step_id, path, "added", None, shown(new)))
    elif new is MISSING or (new is None and depth == 0):
        out.append(FieldChange(step_id, path, "removed", shown(old), None))
    else:
        out.append(FieldChange(step_id, path, "changed", shown(old), shown(new)))


def field_changes(diff: dict[str, dict[str, Any]]) -> list[FieldChange]:
    """One row per changed value of a version's diff, step by step, field by field."""
    out: list[FieldChange] = []
    for step_id, fields in diff.items():
        if not isinstance(fields, dict):
            continue
        for name in sorted(fields):
            change = fields[name]
            if isinstance(change, dict) and ("old" in change or "new" in change):
                _rows(step_id, name, change.get("old"), change.get("new"), 0, out)
            else:  # not the {old, new} shape: shown as it is
                out.append(FieldChange(step_id, name, "changed", None, shown(change)))
    if len(out) > MAX_ROWS:
        cut = len(out) - MAX_ROWS
        out = out[:MAX_ROWS]
        out.append(FieldChange("…", f"{cut} more change(s) not shown", "changed", None, None))
    return out
