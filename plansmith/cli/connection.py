"""The CLI's way to Temporal: a :class:`~workflows.client.PlanClient` connected at once,
or bad input that says how to start Temporal. Imported only by the commands that talk
to Temporal (it loads Temporal's SDK)."""

from __future__ import annotations

from config import Settings
from plansmith.cli.console import CliError
from workflows.client import PlanClient
from workflows.errors import TemporalUnavailable

# The longest wait for connecting, and for one query, update or start.
TIMEOUT_S = 10.0


async def connect(settings: Settings) -> PlanClient:
    """The plan client of the settings' Temporal, connected (CliError when it cannot be)."""
    plans = PlanClient(settings, rpc_timeout_s=TIMEOUT_S, connect_timeout_s=TIMEOUT_S)
    try:
        await plans.client()
    except TemporalUnavailable as e:
        raise CliError(f"{e}\nstart it with `plansmith server` (or `plansmith up`)") from None
    return plans


def plan_id_of(given: str) -> str:
    """The plan id of a command's argument: a plan id, or its workflow id ``plan-<id>``."""
    return given.removeprefix("plan-")
