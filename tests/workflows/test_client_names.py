"""The plan client reaches the workflow's queries, updates and signals by name, without
importing its module (that keeps the CLI's start-up short). These tests hold the names
and types it uses to what :class:`~workflows.plan_workflow.PlanWorkflow` declares: a
renamed handler or a changed result type fails here, not in front of an operator."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

from temporalio.workflow import _Definition

from plans.controls import CONTROL_MODELS, ControlResult
from plans.run_state import PlanRun
from workflows.client import QUERY_RESULTS
from workflows.plan_input import WORKFLOW_NAME, PlanInput, PlanResult
from workflows.plan_workflow import PlanWorkflow

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = _Definition.must_from_class(PlanWorkflow)


def _returns(fn: typing.Any) -> typing.Any:
    return typing.get_type_hints(fn)["return"]


def test_every_query_the_client_reads_is_declared_with_the_type_it_decodes():
    for name, result_type in QUERY_RESULTS.items():
        assert name in DEFINITION.queries, f"PlanWorkflow has no query {name!r}"
        assert _returns(DEFINITION.queries[name].fn) == result_type, name


def test_plans_are_started_and_their_state_read_by_the_names_the_workflow_declares():
    """workflows.starter starts ``WORKFLOW_NAME`` with a PlanInput for a PlanResult, and
    reads an ended run's ``run_state`` as a PlanRun."""
    run = typing.get_type_hints(DEFINITION.run_fn)
    assert DEFINITION.name == WORKFLOW_NAME
    assert run["inp"] is PlanInput and run["return"] is PlanResult
    assert _returns(DEFINITION.queries["run_state"].fn) is PlanRun


def test_every_control_is_an_update_and_a_signal_of_its_name_taking_its_model():
    for name, model in CONTROL_MODELS.items():
        update = DEFINITION.updates.get(name)
        signal = DEFINITION.signals.get(name)
        assert update is not None and signal is not None, name
        assert _returns(update.fn) == ControlResult, name
        for handler in (update.fn, signal.fn):
            arg = typing.get_type_hints(handler)["arg"]
            assert model in typing.get_args(arg), f"{name}: {arg} does not take {model}"


def test_the_client_and_the_read_only_cli_verbs_do_not_load_the_workflow_or_validation():
    """``plansmith status`` (and watch, query, every control) loads the client; neither it
    nor they need the workflow's code, the step runner or plan validation (jsonschema).
    Starting a plan (``run``) needs validation, but not the workflow's code either."""
    probe = (
        "import sys\n"
        "from plansmith.cli.main import command_for\n"
        "for verb in ('status', 'watch', 'query', 'approve', 'cancel'):\n"
        "    command_for(verb)\n"
        "import workflows.starter\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert "workflows.client" in loaded  # the probe did load the client
    heavy = {"workflows.plan_workflow", "workflows.step_runner", "plans.validation", "jsonschema"}
    assert not heavy & loaded, heavy & loaded
