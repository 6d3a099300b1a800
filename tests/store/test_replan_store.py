"""A replan's replacement in the store: every version's document reads back whole (the
replaced steps in the earlier ones), and the status of the plan read from the store
lists the steps the plan has now, not the ones the replan replaced."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session

from plans import replan
from plans.models import Plan, PlanStatus
from plans.views import status_view
from store import reads
from tests.store.test_store import CATALOG, STEPS, Driver, write


def test_a_replacement_keeps_every_version_readable_and_the_status_current(
    engine: Engine,
) -> None:
    d = Driver(STEPS, on_error="replan", require_approval=False)
    d.control("approve")
    assert d.step() == ["a"]
    assert d.step(ok=False) == ["b"]  # b fails for good: the planner is asked
    p = replan.ask(d.run, "b", d.tick())
    proposal = {
        "kind": "replacement",
        "replaces": ["b", "c"],
        "steps": [
            {"id": "b2", "tool": "noop", "depends_on": ["a"]},
            {"id": "c", "tool": "noop", "depends_on": ["b2"], "description": "after b2"},
        ],
    }
    got = replan.receive(d.run, p.n, {"proposal": proposal}, CATALOG, d.tick())
    assert got.state == "applied", got.problems
    write(engine, d.snap(seq=1))
    d.finish()
    assert d.run.final_status == PlanStatus.COMPLETED
    write(engine, d.snap(seq=2))
    with Session(engine) as s:
        versions = reads.get_versions(s, "p1", documents=True)
        docs = [Plan.model_validate(v.document) for v in versions]
        assert [[st.id for st in doc.steps] for doc in docs] == [["a", "b", "c"], ["a", "b2", "c"]]
        assert docs[0].step("c").depends_on == ["b"] and docs[1] == d.run.plan
        assert versions[1].by == "policy" and "replan #1" in versions[1].change
        st = reads.get_status(s, "p1")
    assert st is not None
    assert [x.id for x in st.steps] == ["a", "b2", "c"]
    assert st.counts == {"completed": 3} and st.status == PlanStatus.COMPLETED
    assert st.counts == status_view(d.run).counts
    # the rounds read back as the workflow had them
    assert st.replans == d.run.replans and st.replans[0].state == "applied"
