"""The CLI's way to Temporal: a :class:`~workflows.client.PlanClient` connected at once,
or bad input that says how to start Temporal. Imported only by the commands that talk
to Temporal (it loads Temporal's SDK)."""

from __future__ import annotations

import asyncio

from config import Settings
from plansmith.cli.console import CliError
from workflows.client import PlanClient
from workflows.client import connect as connect_client

# The longest wait for connecting, and for one query, update or start.
TIMEOUT_S = 10.0


async def connect(settings: Settings) -> PlanClient:
    """The plan client of the settings' Temporal, connected (CliError when it cannot be)."""
    try:
        client = await asyncio.wait_for(connect_client(settings), timeout=TIMEOUT_S)
    except Exception as e:
        raise CliError(
            f"cannot reach Temporal at {settings.temporal.address}: {e}\n"
            f"start it with `plansmith server` (or `plansmith up`)"
        ) from None
    return PlanClient(settings, client=client, rpc_timeout_s=TIMEOUT_S)


def plan_id_of(given: str) -> str:
    """The plan id of a command's argument: a plan id, or its workflow id ``plan-<id>``."""
    return given.removeprefix("plan-")
