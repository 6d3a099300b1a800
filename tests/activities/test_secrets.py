"""Secrets on the worker: their values (environment, file), resolved only where the
plan put a reference, and redacted from everything the step activity hands back."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.secrets import (
    Redactor,
    SecretLogFilter,
    SecretsFileError,
    load_secrets,
    redact_url_credentials,
    resolve,
)
from activities.steps import StepActivities
from activities.tools import ToolError
from config import get_settings
from contracts.steps import StepTask
from plans.models import StepKind
from tests.echo_server import EchoServer
from tests.helpers import activity_deps

TOKEN = f"tok-{uuid.uuid4().hex}"


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


def settings_with_file(tmp_path: Path, text: str):
    f = tmp_path / "secrets"
    f.write_text(text)
    return get_settings().replace(secrets={"file": str(f)})


def test_values_come_from_the_environment_and_the_file(tmp_path: Path):
    s = settings_with_file(tmp_path, '{"TOKEN": "from-file", "API": "api-file"}')
    env = {"PLANSMITH_SECRET_TOKEN": "from-env", "PLANSMITH_SECRET_bad-name": "x", "PATH": "/bin"}
    assert load_secrets(s, env) == {"TOKEN": "from-env", "API": "api-file"}
    lines = settings_with_file(tmp_path, "# comment\nA=1\nB = 'two words'\n\nC=x=y\n")
    assert load_secrets(lines, {}) == {"A": "1", "B": "two words", "C": "x=y"}


def test_a_bad_file_is_named_without_its_values(tmp_path: Path):
    s = settings_with_file(tmp_path, f"TOKEN={TOKEN}\nthis line has no equals {TOKEN}\n")
    with pytest.raises(SecretsFileError) as e:
        load_secrets(s, {})
    assert "line 2: expected NAME=value" in str(e.value) and TOKEN not in str(e.value)
    missing = get_settings().replace(secrets={"file": str(tmp_path / "nope")})
    with pytest.raises(SecretsFileError, match="cannot read it"):
        load_secrets(missing, {})


def test_resolve_only_at_the_plan_paths_and_name_an_unknown_secret():
    params = {
        "url": "http://h/?t={{ secrets.TOKEN }}",
        # a value a step produced that looks like a reference is data, never resolved
        "body": "{{ secrets.TOKEN }}",
    }
    out, used = resolve(params, [["url"]], {"TOKEN": TOKEN})
    assert out == {"url": f"http://h/?t={TOKEN}", "body": "{{ secrets.TOKEN }}"}
    assert used == {"TOKEN": TOKEN}
    assert params["url"].endswith("{{ secrets.TOKEN }}")  # the task's own params unchanged
    with pytest.raises(ToolError) as e:
        resolve(
            {"headers": {"Authorization": "{{ secrets.NOPE }}"}}, [["headers", "Authorization"]], {}
        )
    assert str(e.value).startswith("params.headers.Authorization: unknown secret NOPE")
    assert not e.value.retryable


def test_redaction_covers_escaped_forms_and_credentials_in_urls():
    value = 'p@ss w/rd&"x'
    r = Redactor([value])
    text = f"plain {value} json {json.dumps(value)}"
    text += f" q {quote(value, safe='')} qp {quote_plus(value)}"
    assert "p@ss" not in r.text(text)
    assert r.value({"k": [value, {value: 1}]}) == {"k": ["***", {"***": 1}]}
    assert redact_url_credentials("http://h/?design=a&sig=b") == "http://h/?design=a&sig=***"
    assert (
        redact_url_credentials(
            "GET https://bob:hunter2@example.test/x?page=2&access_token=abc&X-Amz-Signature=f00&apiKey=k#frag"
        )
        == "GET https://***@example.test/x?page=2&access_token=***&X-Amz-Signature=***&apiKey=***#frag"
    )


def _task(params: dict[str, Any], paths: list[list[str | int]]) -> StepTask:
    return StepTask(
        plan_id="p",
        step_id="s",
        kind=StepKind.TOOL,
        tool="http_request",
        params=params,
        idempotency_key="p:s:v1",
        secret_params=paths,
    )


async def test_execute_step_sends_the_value_and_redacts_the_echo(tmp_path: Path, echo: EchoServer):
    deps = activity_deps(settings=settings_with_file(tmp_path, f"TOKEN={TOKEN}\n"))
    task = _task(
        {
            "url": echo.url + "/deploy?token={{ secrets.TOKEN }}",
            "headers": {"Authorization": "Bearer {{ secrets.TOKEN }}"},
        },
        [["url"], ["headers", "Authorization"]],
    )
    outcome = await ActivityEnvironment().run(StepActivities(deps).execute_step, task)
    assert echo.received(TOKEN)  # the server did get the value, in the URL and the header
    assert echo.requests[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    dumped = json.dumps(outcome.output)
    assert TOKEN not in dumped
    assert outcome.output["body"]["you_sent"]["headers"]["Authorization"] == "Bearer ***"


async def test_a_tool_error_that_echoes_the_value_is_redacted(tmp_path: Path, echo: EchoServer):
    deps = activity_deps(settings=settings_with_file(tmp_path, f"TOKEN={TOKEN}\n"))
    task = _task(
        {
            "url": echo.url + "/reject?token={{ secrets.TOKEN }}",
            "headers": {"X-Key": "{{ secrets.TOKEN }}"},
        },
        [["url"], ["headers", "X-Key"]],
    )
    with pytest.raises(ApplicationError) as e:
        await ActivityEnvironment().run(StepActivities(deps).execute_step, task)
    assert echo.received(TOKEN)
    assert "answered 400" in e.value.message and "***" in e.value.message
    assert TOKEN not in e.value.message and e.value.__cause__ is None


async def test_a_connection_error_hides_the_url_credentials(tmp_path: Path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    deps = activity_deps(settings=settings_with_file(tmp_path, f"TOKEN={TOKEN}\n"))
    task = _task(
        {
            "url": f"http://user:pw-{TOKEN}@127.0.0.1:{port}/x?token={{{{ secrets.TOKEN }}}}",
            "timeout_s": 2,
        },
        [["url"]],
    )
    with pytest.raises(ApplicationError) as e:
        await ActivityEnvironment().run(StepActivities(deps).execute_step, task)
    assert e.value.type == "ConnectionError"
    assert TOKEN not in e.value.message and "pw-" not in e.value.message
    # without any secret, credentials in a URL are hidden too
    plain = _task({"url": f"http://127.0.0.1:{port}/x?api_key=plain-key-1", "timeout_s": 2}, [])
    with pytest.raises(ApplicationError) as e:
        await ActivityEnvironment().run(StepActivities(deps).execute_step, plain)
    assert "plain-key-1" not in e.value.message and "api_key=***" in e.value.message


async def test_a_reference_outside_the_plan_paths_is_sent_as_text(tmp_path: Path, echo: EchoServer):
    """A tool call a model asks for (or a value an earlier step produced) comes with no
    secret paths: a reference in it is never resolved."""
    deps = activity_deps(settings=settings_with_file(tmp_path, f"TOKEN={TOKEN}\n"))
    task = _task({"url": echo.url + "/x", "json": {"leak": "{{ secrets.TOKEN }}"}}, [])
    outcome = await ActivityEnvironment().run(StepActivities(deps).execute_step, task)
    assert outcome.output["status"] == 200
    assert not echo.received(TOKEN) and "{{ secrets.TOKEN }}" in echo.requests[0]["body"]


async def test_an_unknown_secret_fails_the_step_without_retry(tmp_path: Path, echo: EchoServer):
    deps = activity_deps(settings=settings_with_file(tmp_path, "OTHER=x\n"))
    task = _task(
        {"url": echo.url + "/x", "headers": {"A": "{{ secrets.TOKEN }}"}}, [["headers", "A"]]
    )
    with pytest.raises(ApplicationError) as e:
        await ActivityEnvironment().run(StepActivities(deps).execute_step, task)
    assert e.value.type == "UnknownSecret" and e.value.non_retryable
    assert "params.headers.A: unknown secret TOKEN" in e.value.message
    assert echo.requests == []


def test_the_worker_log_filter_redacts_values_and_url_credentials(tmp_path: Path):
    s = settings_with_file(tmp_path, f"TOKEN={TOKEN}\n")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretLogFilter(s))
    log = logging.getLogger(f"test-secrets-{uuid.uuid4().hex}")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("calling %s", f"http://127.0.0.1:1/x?token={TOKEN}&sig=abc")
        try:
            raise RuntimeError(f"boom {TOKEN}")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "calling http://127.0.0.1:1/x?token=***&sig=***" in text
    assert "RuntimeError: boom ***" in text
    assert TOKEN not in text


async def test_a_server_that_echoes_the_value_base64_encoded_is_redacted(
    tmp_path: Path, echo: EchoServer
):
    """A service echoes what it was sent, base64-encoded: the encoded value is a form of
    the secret too (plain and URL-safe, with or without padding)."""
    value = TOKEN + "~~?"  # bytes whose base64 differs between the two alphabets
    deps = activity_deps(settings=settings_with_file(tmp_path, f"TOKEN={value}\n"))
    task = _task(
        {"url": echo.url + "/b64", "method": "POST", "body": "{{ secrets.TOKEN }}"},
        [["body"]],
    )
    outcome = await ActivityEnvironment().run(StepActivities(deps).execute_step, task)
    assert echo.requests[0]["body"] == value  # the server got the value
    encoded = [
        base64.b64encode(value.encode()).decode(),
        base64.urlsafe_b64encode(value.encode()).decode().rstrip("="),
    ]
    assert encoded[0] != encoded[1].ljust(len(encoded[0]), "=")
    dumped = json.dumps(outcome.output)
    assert value not in dumped and TOKEN not in dumped
    for form in encoded:
        assert form.rstrip("=") not in dumped, form
    assert outcome.output["body"]["body_b64"] == "***"
    assert outcome.output["body"]["body_b64url"] == "***"
