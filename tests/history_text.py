"""A workflow's history as Temporal itself keeps it, read with the ``temporal`` CLI
(``workflow show -o json``, no codec), made greppable: the CLI prints each payload's data
and metadata in base64, so they are decoded and appended to the raw text."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import subprocess
from typing import Any

from plansmith.devserver import temporal_cli_path


def _decoded(node: Any, out: list[str]) -> None:
    if isinstance(node, dict):
        if "data" in node and isinstance(node["data"], str):
            with contextlib.suppress(binascii.Error, ValueError):
                out.append(base64.b64decode(node["data"], validate=True).decode("utf-8", "replace"))
        for value in node.values():
            _decoded(value, out)
    elif isinstance(node, list):
        for value in node:
            _decoded(value, out)


def history_text(address: str, workflow_id: str) -> str:
    """The raw JSON history plus every payload's data, decoded."""
    raw = subprocess.run(
        [
            temporal_cli_path(),
            "workflow",
            "show",
            "-w",
            workflow_id,
            "--address",
            address,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    decoded: list[str] = []
    _decoded(json.loads(raw), decoded)
    assert decoded, "the history has no payloads"
    return raw + "\n" + "\n".join(decoded)
