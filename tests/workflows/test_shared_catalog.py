"""A waiting plan does not hold its own copy of the tool catalog: the specs equal to the
worker's own are shared by every run (contracts.tools.shared, PlanWorkflow.__init__)."""

from __future__ import annotations

from contracts.tools import catalog, shared
from workflows.plan_input import PlanInput
from workflows.transport import data_converter


def through_temporal(inp: PlanInput) -> PlanInput:
    converter = data_converter().payload_converter
    return converter.from_payloads(converter.to_payloads([inp]), [PlanInput])[0]


def test_the_catalog_a_run_receives_is_the_workers_own_specs() -> None:
    mine = catalog()
    received = through_temporal(PlanInput(tools=mine)).tools
    assert received is not None and received == mine
    assert all(received[name] is not spec for name, spec in mine.items())  # a copy, decoded
    kept = shared(received)
    assert list(kept) == list(mine)
    assert all(kept[name] is spec for name, spec in mine.items())


def test_a_spec_that_differs_from_the_workers_stays_as_the_plan_has_it() -> None:
    mine = catalog()
    name = next(iter(mine))
    older = mine[name].model_copy(update={"risk": "critical", "description": "as it was"})
    received = through_temporal(PlanInput(tools={**mine, name: older, "gone": older})).tools
    assert received is not None
    kept = shared(received)
    assert kept[name] == older and kept[name] is not mine[name]
    assert kept["gone"] == older
    assert all(kept[n] is mine[n] for n in mine if n != name)
