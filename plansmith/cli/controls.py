"""Steering a plan from the command line: every control verb (``approve``, ``reject``,
``pause``, ``retry-step``, …), sent to the plan's workflow as its update, so a refused
control says why at once (exit code 2)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from config import Settings
from plansmith.cli.connection import connect, plan_id_of
from plansmith.cli.console import EXIT_OK, CliError

# The options of the control verbs that go into the control's argument as they are.
FIELDS = ("comment", "version", "digest", "reason", "step_id", "question", "feedback", "answer")


def control_argument(args: argparse.Namespace) -> dict[str, Any]:
    """The control's one JSON object argument, from the verb's options."""
    payload: dict[str, Any] = {"by": args.by}
    for field in FIELDS:
        value = getattr(args, field, None)
        if value is not None:
            payload[field] = value
    if args.control == "apply_correction":
        try:
            updated = json.loads(args.updated_step)
        except json.JSONDecodeError as e:
            raise CliError(f"--updated-step is not JSON: {e}") from None
        payload["correction"] = {"updated_step": updated}
        if getattr(args, "approve", False):
            payload["approve"] = True
    return payload


async def cmd_control(args: argparse.Namespace, settings: Settings) -> int:
    name = args.control
    payload = control_argument(args)
    plans = await connect(settings)
    plan_id = plan_id_of(args.id)
    st = await plans.status(plan_id)
    if st.status.terminal:
        # The workflow is closed: Temporal itself would only say "workflow completed".
        raise CliError(f"{name} refused: the plan already ended {st.status.value} ({st.outcome})")
    result = await plans.control(plan_id, name, payload)
    print(json.dumps(result.model_dump(mode="json"), indent=2, default=str))
    return EXIT_OK
