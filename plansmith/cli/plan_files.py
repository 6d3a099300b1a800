"""Plan files: read a plan document (JSON or YAML), set its inputs and id, validate it
fully; ``plansmith validate``.

Needs only the configuration, the plan domain and the tool catalog: ``validate`` starts
without Temporal's SDK.
"""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

from config import Settings, get_settings
from contracts.tools import catalog
from plans.models import Plan
from plans.validation import load_document, parse_plan, validate_or_raise
from plansmith.cli.console import EXIT_OK, CliError, parse_inputs


def load_plan(
    path: str,
    inputs: list[str] | None = None,
    plan_id: str | None = None,
    max_steps: int | None = None,
) -> Plan:
    """Read, shape-check and fully validate a plan file; give it an id if it has none.
    ``max_steps``: default ``PLANSMITH_MAX_PLAN_STEPS``."""
    p = Path(path)
    if not p.is_file():
        raise CliError(f"{path}: no such file")
    data = load_document(p.read_text(encoding="utf-8"), source=path)
    if inputs:
        data.setdefault("inputs", {}).update(parse_inputs(inputs))
    if plan_id:
        data["id"] = plan_id
    plan = parse_plan(data)
    if plan.id is None:
        stem = "".join(c if c.isalnum() else "-" for c in p.stem.lower()).strip("-") or "plan"
        plan = plan.model_copy(update={"id": f"{stem[:40]}-{uuid.uuid4().hex[:8]}"})
    if max_steps is None:
        max_steps = get_settings().api.max_plan_steps
    return validate_or_raise(plan, catalog(), max_steps=max_steps)


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    plan = load_plan(args.file, max_steps=settings.api.max_plan_steps)
    kinds: dict[str, int] = {}
    for s in plan.steps:
        kinds[s.kind.value] = kinds.get(s.kind.value, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    print(f"{args.file}: valid — {len(plan.steps)} step(s) ({summary})")
    return EXIT_OK
