"""execute_step never repeats an effect because of what comes after it, and a validation
step's judge never passes a criterion no model assessed.

The effects go to a server the test starts on 127.0.0.1 that counts requests by key."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import persist
from activities.llm.base import LLMRequest, LLMResponse, ToolCall
from activities.steps import StepActivities
from config import get_settings
from contracts.planning import Usage
from contracts.snapshots import as_output_ref
from contracts.steps import StepOutcome, StepTask, request_key
from plans.models import StepKind
from store import blobs
from tests.helpers import activity_deps, store_engine
from tests.key_server import KeyServer
from tests.llm_fakes import ScriptedModel


@pytest.fixture
def server() -> Iterator[KeyServer]:
    with KeyServer() as srv:
        yield srv


@pytest.fixture
def quick_store_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(persist, "STORE_FIRST_DELAY_S", 0.01)
    monkeypatch.setattr(persist, "STORE_MAX_DELAY_S", 0.02)


def failing_put_blob(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """``store.blobs.put_blob`` fails its first ``times`` calls (the store is down)."""
    real = blobs.put_blob
    calls: list[int] = []

    def put_blob(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) <= times:
            raise ConnectionError("the store is unreachable")
        return real(*args, **kw)

    monkeypatch.setattr(blobs, "put_blob", put_blob)
    return calls


async def run(task: StepTask, model: Any = None, limit: int | None = None) -> StepOutcome:
    settings = get_settings()
    if limit is not None:
        settings = settings.replace(store={"large_output_bytes": limit})
    store_engine()
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, start_to_close_timeout=timedelta(seconds=60))
    return await env.run(StepActivities(activity_deps(model, settings)).execute_step, task)


def post(server: KeyServer, path: str, key: str = "plan-1:pay:abc") -> StepTask:
    return StepTask(
        plan_id="plan-1",
        step_id="pay",
        kind=StepKind.TOOL,
        tool="http_request",
        params={"url": server.url(path), "method": "POST", "json": {"amount": 5}},
        idempotency_key=key,
    )


# --- the output's store write after the effect ----------------------------------------


async def test_a_failing_store_write_is_retried_without_sending_the_post_again(
    server: KeyServer, monkeypatch: pytest.MonkeyPatch, quick_store_retries: None
) -> None:
    tries = failing_put_blob(monkeypatch, persist.STORE_TRIES - 1)
    out = await run(post(server, "/big?size=5000"), limit=1000)
    assert server.requests("/big") == ["plan-1:pay:abc"]  # one POST
    assert len(tries) == persist.STORE_TRIES  # the write alone was tried again
    ref = as_output_ref(out.output)
    assert ref is not None and ref.size > 5000
    assert persist.load_output(ref, store_engine())["body"]["pad"] == "x" * 5000


async def test_a_store_that_stays_down_fails_the_step_without_a_retry(
    server: KeyServer, monkeypatch: pytest.MonkeyPatch, quick_store_retries: None
) -> None:
    tries = failing_put_blob(monkeypatch, 1000)
    with pytest.raises(ApplicationError) as caught:
        await run(post(server, "/big?size=5000"), limit=1000)
    err = caught.value
    assert err.type == "OutputNotStored"
    assert err.non_retryable is True  # Temporal does not run the POST again
    assert f"after {persist.STORE_TRIES} tries" in err.message
    assert "ConnectionError: the store is unreachable" in err.message
    assert "retry_step" in err.message and "same idempotency key" in err.message
    assert server.requests("/big") == ["plan-1:pay:abc"]
    assert len(tries) == persist.STORE_TRIES


async def test_the_store_retries_end_before_the_activity_times_out(
    server: KeyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a short timeout there is no time to wait: the step fails (non-retryable)
    rather than letting the timeout make Temporal run the POST again."""
    monkeypatch.setattr(persist, "STORE_FIRST_DELAY_S", 5.0)
    tries = failing_put_blob(monkeypatch, 1000)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, start_to_close_timeout=timedelta(seconds=4))
    settings = get_settings().replace(store={"large_output_bytes": 1000})
    store_engine()
    with pytest.raises(ApplicationError) as caught:
        await env.run(
            StepActivities(activity_deps(None, settings)).execute_step,
            post(server, "/big?size=5000"),
        )
    assert caught.value.type == "OutputNotStored" and caught.value.non_retryable
    assert len(tries) == 1 and "after 1 try" in caught.value.message
    assert len(server.requests("/big")) == 1


# --- judges never pass unjudged -------------------------------------------------------


def validation(criteria: list[str], subject: Any, **params: Any) -> StepTask:
    return StepTask(
        plan_id="plan-1",
        step_id="review",
        kind=StepKind.VALIDATION,
        params={"judge": {"criteria": criteria, "subject": subject}, **params},
        idempotency_key="plan-1:review:abc",
    )


async def test_the_offline_judge_fails_a_criterion_it_cannot_assess() -> None:
    with pytest.raises(ApplicationError) as caught:
        await run(validation(["mentions 'release'", "is written politely"], "the release"))
    err = caught.value
    assert err.type == "ValidationFailed" and err.non_retryable is True
    assert "judge: is written politely (no model assessed it)" in err.message
    assert "on_unassessed: ask" in err.message
    assert "mentions 'release'" not in err.message  # that one was checked, and passed


async def test_the_offline_judge_passes_what_it_did_check() -> None:
    out = await run(validation(["mentions 'release' and \"2.4\""], "Release 2.4 is out"))
    assert out.unassessed == []
    assert out.output["passed"] is True
    (verdict,) = out.output["judge"]["verdicts"]
    assert verdict["passed"] is True and verdict["assessed"] is True


async def test_on_unassessed_ask_hands_the_criterion_to_a_person() -> None:
    out = await run(
        validation(["mentions 'release'", "is written politely"], "release", on_unassessed="ask")
    )
    assert out.unassessed == ["is written politely"]
    assert out.output["passed"] is False
    assert out.output["unassessed"] == ["is written politely"]
    polite = out.output["judge"]["verdicts"][1]
    assert polite["assessed"] is False and polite["passed"] is False
    assert polite["reason"].startswith("no model assessed this criterion")


async def test_on_unassessed_ask_still_fails_what_did_fail() -> None:
    with pytest.raises(ApplicationError) as caught:
        await run(validation(["mentions 'rollback'", "is polite"], "release", on_unassessed="ask"))
    msg = caught.value.message
    assert "judge: mentions 'rollback'" in msg and "judge: is polite (no model assessed it)" in msg


def verdicts(*given: dict[str, Any]) -> LLMResponse:
    inp = {"verdicts": list(given)}
    return LLMResponse(
        model="scripted",
        tool_calls=[ToolCall(id="v1", name="record_verdict", input=inp)],
        content=[{"type": "tool_use", "id": "v1", "name": "record_verdict", "input": inp}],
        stop_reason="tool_use",
        usage=Usage(input_tokens=5, output_tokens=5),
    )


@pytest.mark.parametrize(
    "answer",
    [
        # a real model's verdict that leaves a criterion out
        verdicts({"criterion": "is polite", "passed": True, "reason": "it is"}),
        # one that says it could not judge it
        verdicts(
            {"criterion": "is polite", "passed": True, "reason": "it is"},
            {"criterion": "cites a source", "passed": True, "reason": "?", "assessed": False},
        ),
    ],
)
async def test_a_models_verdict_missing_a_criterion_counts_as_unassessed(
    answer: LLMResponse,
) -> None:
    model = ScriptedModel(answer)
    task = validation(["is polite", "cites a source"], "hello")
    with pytest.raises(ApplicationError) as caught:
        await run(task, model)
    assert "judge: cites a source (no model assessed it)" in caught.value.message
    assert "is polite" not in caught.value.message
    out = await run(
        task.model_copy(update={"params": {**task.params, "on_unassessed": "ask"}}), model
    )
    assert out.unassessed == ["cites a source"]
    assert isinstance(model.requests[0], LLMRequest)


# --- the key of a request -------------------------------------------------------------


def test_the_request_key_follows_the_request_and_nothing_else() -> None:
    params = {"url": "http://127.0.0.1:9/pay", "method": "POST", "json": {"a": 1, "b": 2}}
    key = request_key("plan-1", "pay", StepKind.TOOL, "http_request", params)
    assert key.startswith("plan-1:pay:") and len(key.rsplit(":", 1)[1]) == 16
    reordered = {"json": {"b": 2, "a": 1}, "method": "POST", "url": params["url"]}
    assert request_key("plan-1", "pay", StepKind.TOOL, "http_request", reordered) == key
    changed = {**params, "json": {"a": 1, "b": 3}}
    assert request_key("plan-1", "pay", StepKind.TOOL, "http_request", changed) != key
    assert request_key("plan-2", "pay", StepKind.TOOL, "http_request", params) != key
    assert request_key("plan-1", "refund", StepKind.TOOL, "http_request", params) != key
    # a secret travels as its reference: the key never depends on (or reveals) its value
    ref = {**params, "headers": {"Authorization": "{{ secrets.PAY_TOKEN }}"}}
    assert request_key("plan-1", "pay", "tool", "http_request", ref) == request_key(
        "plan-1", "pay", StepKind.TOOL, "http_request", ref
    )
