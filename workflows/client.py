"""The one way to reach Temporal: a client with the pydantic data converter.

The API, the worker, the CLI and the tests all connect through :func:`connect`, so they
share one data converter.
"""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from config import Settings, get_settings


async def connect(settings: Settings | None = None, address: str | None = None) -> Client:
    """A client of the settings' Temporal (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``)."""
    s = settings or get_settings()
    return await Client.connect(
        address or s.temporal.address,
        namespace=s.temporal.namespace,
        data_converter=pydantic_data_converter,
    )
