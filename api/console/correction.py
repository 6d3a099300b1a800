"""The console's correction editor: a step's document as the person edits it, checked
by the server without sending anything.

The text is untrusted: it is size-limited, read as data by the plan loader's JSON/YAML
reader (which refuses YAML alias bombs and documents nested too deeply), never evaluated,
and only ever shown back escaped. The corrected plan is made and validated by
:func:`plans.steering.corrected_plan`, the very function the workflow's
``apply_correction`` runs, against the plan the page showed and the tool catalog
``POST /api/plans`` validates with; every problem keeps its location.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from plans.models import Plan, Step, ToolSpec
from plans.steering import corrected_plan, diff_step
from plans.validation import PlanInvalid, load_document

MAX_DOCUMENT_CHARS = 64_000  # characters of one corrected step's document
SOURCE = "document"  # where a problem of the text itself is located
NOT_AN_OBJECT = "a plan document must be an object"  # plans.plan_loading's words


@dataclass(frozen=True)
class Located:
    """One problem, where it is: in the plan (``location``), and in the edited step's
    document when it is there (``field``, e.g. ``params.url``)."""

    location: str
    message: str
    field: str | None = None


@dataclass
class Checked:
    """What the check of a corrected step found."""

    text: str
    problems: list[Located] = field(default_factory=list)
    # when valid: the step's document as it will be sent, and field -> {old, new}
    updated_step: dict[str, Any] | None = None
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and self.updated_step is not None


def step_document(step: Step) -> str:
    """The text the editor starts from: the step's fields that differ from the defaults,
    as indented JSON."""
    return json.dumps(step.model_dump(mode="json", exclude_defaults=True), indent=2)


def _field_of(location: str, index: int) -> str | None:
    """``steps[3].params.url`` -> ``params.url`` when step 3 is the edited one."""
    m = re.match(rf"steps\[{index}\](?:\.(.*))?$", location)
    if m is None:
        return "id" if location == "updated_step.id" else None
    return m.group(1) or "(the step)"


def _plain(message: str) -> str:
    """A reader's message for the editor: the YAML parser's lines that quote the text back
    (indented under each of its sentences) left out; the line and column stay."""
    if message == NOT_AN_OBJECT:
        return "the step must be an object (a JSON or YAML mapping of its fields)"
    lines = [line.strip() for line in message.splitlines() if line and not line[0].isspace()]
    return ": ".join(lines) if lines else message


def _read(text: str) -> tuple[dict[str, Any] | None, list[Located]]:
    if len(text) > MAX_DOCUMENT_CHARS:
        return None, [
            Located(
                SOURCE,
                f"the document is {len(text)} characters long; at most {MAX_DOCUMENT_CHARS}",
            )
        ]
    if not text.strip():
        return None, [Located(SOURCE, "the document is empty: write the step's fields")]
    try:
        data = load_document(text, source=SOURCE)
    except PlanInvalid as e:
        return None, [Located(p.location, _plain(p.message)) for p in e.problems]
    try:  # plain JSON values only (YAML dates become text; NaN and Infinity are refused)
        plain = json.loads(json.dumps(data, default=str, allow_nan=False))
    except ValueError as e:
        return None, [Located(SOURCE, f"not representable as JSON: {e}")]
    return plain, []


def check_correction(
    plan: Plan, step_id: str, text: str, catalog: Mapping[str, ToolSpec]
) -> Checked:
    """The corrected step ``text`` (JSON or YAML) checked against ``plan``: the located
    problems, or the document to send with what it changes."""
    checked = Checked(text=text)
    index = next((i for i, s in enumerate(plan.steps) if s.id == step_id), None)
    if index is None:
        checked.problems = [Located("step_id", f"the plan has no step {step_id!r}")]
        return checked
    updated, checked.problems = _read(text)
    if updated is None:
        return checked
    corrected, problems = corrected_plan(plan, step_id, updated, catalog)
    if corrected is None:
        checked.problems = [
            Located(p.location, p.message, _field_of(p.location, index)) for p in problems
        ]
        return checked
    checked.updated_step = updated
    checked.changes = diff_step(plan.steps[index], corrected.step(step_id))
    return checked
