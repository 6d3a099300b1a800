"""What every command of the CLI shares: exit codes, bad input, what is printed on
stderr, ``KEY=VALUE`` inputs, who you are, and where the Temporal Web UI shows a plan.

Imports only the standard library and :mod:`workflows.errors` (plain Python), so the
parser and ``--help`` stay fast.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from workflows.errors import PlanClientError, PlanNotFound

if TYPE_CHECKING:
    from config import Settings

EXIT_OK, EXIT_NOT_COMPLETED, EXIT_BAD_INPUT = 0, 1, 2


class CliError(Exception):
    """Bad input: printed on stderr, exit code 2."""


def err(msg: str) -> None:
    print(msg, file=sys.stderr)


def message_of(e: PlanClientError) -> str:
    """What the CLI says when the plan client gives up (a plan id may have been given as
    its workflow id, so a missing plan is named by its workflow id)."""
    if isinstance(e, PlanNotFound):
        return f"no plan with workflow id {e.workflow_id}"
    return str(e)


def parse_inputs(items: Iterable[str] | None) -> dict[str, Any]:
    """``--input KEY=VALUE`` options as a dict; a value is parsed as JSON if it can be."""
    inputs: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CliError(f"--input {item!r}: expected KEY=VALUE")
        try:
            inputs[key] = json.loads(raw)
        except json.JSONDecodeError:
            inputs[key] = raw
    return inputs


def default_actor() -> str:
    """Who runs the command (the ``--by`` default): the login name, else ``cli``."""
    try:
        return getpass.getuser()
    except Exception:
        return "cli"


def ui_url(settings: Settings, workflow_id: str | None = None) -> str:
    """The Temporal Web UI's page of a workflow (or its list of workflows)."""
    if settings.temporal.ui_url:
        root = settings.temporal.ui_url.rstrip("/")
    else:
        local = settings.temporal.host in ("localhost", "0.0.0.0")
        root = (
            f"http://{'127.0.0.1' if local else settings.temporal.host}:{settings.temporal.ui_port}"
        )
    base = f"{root}/namespaces/{settings.temporal.namespace}/workflows"
    return f"{base}/{workflow_id}" if workflow_id else base
