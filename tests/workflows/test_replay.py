"""Replay the recorded histories in tests/histories/ against today's ``PlanWorkflow``.

A change to the workflow (or to the engine it drives) that would issue different
commands for a run already in progress fails here, before it can break running plans.
No server is needed: the ``Replayer`` feeds each stored history to the workflow code.
See tests/histories/README.md for when and how to record new histories.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

import tests.tools_for_tests  # noqa: F401  the test tools are part of the recorded plans' catalog
from plans.models import workflow_id_for
from workflows.plan_input import WORKFLOW_NAME
from workflows.plan_workflow import PlanWorkflow

HISTORIES = Path(__file__).resolve().parents[1] / "histories"
PLAN_ID_PREFIX = "hist-"  # as in tests/histories/make_histories.py
MIN_HISTORIES = 15  # an emptied or half-deleted folder must not pass


def load(path: Path) -> WorkflowHistory:
    workflow_id = workflow_id_for(f"{PLAN_ID_PREFIX}{path.stem}")
    return WorkflowHistory.from_json(workflow_id, path.read_text())


async def replay(workflows: list[type], paths: Iterable[Path]) -> dict[str, Exception]:
    """Replay every file; return the failures by file name."""
    histories = {path.name: load(path) for path in paths}
    by_run = {h.run_id: name for name, h in histories.items()}

    async def each() -> AsyncIterator[WorkflowHistory]:
        for h in histories.values():
            yield h

    replayer = Replayer(workflows=workflows, data_converter=pydantic_data_converter)
    results = await replayer.replay_workflows(each(), raise_on_replay_failure=False)
    return {by_run[run_id]: err for run_id, err in results.replay_failures.items()}


def history_files() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


async def test_there_are_enough_histories():
    names = [p.name for p in history_files()]
    assert len(names) >= MIN_HISTORIES, (
        f"only {len(names)} histories in {HISTORIES} ({names}); regenerate them with "
        f"`python -m tests.histories.make_histories`"
    )
    ids = {load(p).run_id for p in history_files()}
    assert len(ids) == len(names), "two history files hold the same run"


async def test_recorded_histories_replay_without_nondeterminism():
    failures = await replay([PlanWorkflow], history_files())
    assert not failures, "replay failed for:\n" + "\n".join(
        f"  {name}: {type(err).__name__}: {err}" for name, err in sorted(failures.items())
    )


# --- the net catches something ---------------------------------------------------------


@workflow.defn(name=WORKFLOW_NAME, sandboxed=False)
class DriftedPlanWorkflow:
    """Stands in for a careless edit: it sleeps before its first command, so it issues a
    timer where the recorded run upserted search attributes and scheduled an activity."""

    @workflow.run
    async def run(self, inp: dict) -> None:
        await workflow.sleep(timedelta(seconds=1))


@pytest.mark.parametrize("name", ["diamond.json", "on_error_stop.json"])
async def test_a_different_workflow_under_the_same_name_fails_to_replay(name):
    failures = await replay([DriftedPlanWorkflow], [HISTORIES / name])
    assert set(failures) == {name}
    assert isinstance(failures[name], NondeterminismError), failures[name]
