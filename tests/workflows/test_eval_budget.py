"""Bounded evaluation on the local dev server: a template, a condition or a JMESPath
transform that would build gigabytes or burn minutes of CPU fails its own step within
seconds, with a message naming the limit; plans running beside it complete, the worker's
memory stays small and no workflow task fails (a failed workflow task is retried on
every worker: one poison plan would take them all down).

The hostile values are built from a step's output, so validation (which refuses the
literal forms: tests/plans/test_eval_budget.py) cannot see them and the run-time budget
is what stops them.
"""

from __future__ import annotations

import asyncio
import time

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from contracts.tools import catalog
from plans.validation import validate_plan
from tests.helpers import make_plan, start, status

MAX_RSS_MB = 500
WORKER_START_MB = 250  # a `plansmith worker` process's RSS once it polls, rounded up

# The three expressions of the issue, their constants moved to a step's output.
FORMAT = "{{ steps.src.output.fmt % 1 }}"  # '%2000000000d' % 1: a 2 GB string
REPEAT = "{{ str([(steps.src.output.x * steps.src.output.n)] * steps.src.output.n) }}"
SORTS = "{{ [len(sorted(steps.src.output.x * steps.src.output.n)) for c in steps.src.output.x * 10000] }}"
JMES_40 = " | ".join(["[@,@]"] * 40)  # 2^40 copies of the input once serialised


def transform(sid: str, data: object, expression: str = "@", **kw: object) -> dict:
    return {
        "id": sid,
        "tool": "transform",
        "params": {"data": data, "expression": expression},
        **kw,
    }


def hostile_plan() -> dict:
    after = {"depends_on": ["src"]}
    return {
        "steps": [
            transform("src", {"fmt": "%2000000000d", "x": "x", "n": 100000}),
            transform("format", FORMAT, **after),
            transform("repeat", {"text": REPEAT}, **after),
            transform("sorts", SORTS, **after),
            transform("cond", 1, when="len(steps.src.output.fmt % 1) > 0", **after),
            transform("jmes", {"a": "{{ steps.src.output.x }}"}, JMES_40, **after),
            transform("after", "{{ steps.src.output.n }}", **after),
        ]
    }


def benign_plan(i: int) -> dict:
    return {
        "steps": [
            transform("a", {"items": [{"n": k, "name": f"item-{k}"} for k in range(200)]}),
            transform("b", "{{ [x.name for x in steps.a.output['items'] if x.n % 2 == 0] }}",
                      depends_on=["a"]),
            transform("c", {"count": "{{ len(steps.b.output) }}", "first": "{{ steps.b.output[0] }}"},
                      "{n: count, f: first}", depends_on=["b"]),
            {"id": "d", "tool": "wait", "params": {"seconds": 1}, "depends_on": ["c"]},
            transform("e", "{{ steps.c.output }}", "[@,@] | [@,@]", depends_on=["d"]),
        ]
    }  # fmt: skip


def _vm(field: str) -> int:
    """A VmHWM/VmRSS line of this process (the in-process worker's) in MB."""
    with open("/proc/self/status") as f:
        lines = f.read().splitlines()
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise AssertionError(f"no {field} in /proc/self/status")


async def workflow_task_failures(client: Client, workflow_id: str) -> list[str]:
    handle = client.get_workflow_handle(workflow_id)
    return [
        str(e.workflow_task_failed_event_attributes.failure.message)
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    ]


async def test_hostile_evaluations_fail_their_steps_not_the_worker(client, worker, task_queue):
    hostile = make_plan(hostile_plan()["steps"], on_error="continue")
    benign = [make_plan(benign_plan(i)["steps"]) for i in range(2)]
    for plan in [hostile, *benign]:
        assert validate_plan(plan, catalog()) == [], plan.id  # only run time can stop them

    with open("/proc/self/clear_refs", "w") as f:  # the peak RSS starts from now
        f.write("5")
    rss_before = _vm("VmRSS")
    began = time.monotonic()
    handles = [await start(client, p, task_queue) for p in [*benign, hostile]]
    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120)
    took = time.monotonic() - began
    peak = _vm("VmHWM")
    print(f"plans took {took:.1f} s; worker process RSS {rss_before} MB before, peak {peak} MB")

    # Plans running beside it complete.
    assert [r.status for r in results[:2]] == ["completed", "completed"]
    for h in handles[:2]:
        st = await status(h)
        assert st.status == "completed"
        assert {s.id: s.output for s in st.steps}["c"] == {"n": 100, "f": "item-0"}

    # Each hostile step failed, on its own, naming the limit; the others ran.
    st = await status(handles[2])
    steps = {s.id: s for s in st.steps}
    assert steps["src"].status == "completed"
    assert steps["after"].status == "completed" and steps["after"].output == 100000
    expected = {
        "format": ("params could not be rendered: step 'format'", "the limit of a value's size"),
        "repeat": ("params could not be rendered: step 'repeat', params.data.text", "the limit of a value's size"),
        "sorts": ("params could not be rendered: step 'sorts'", "operations per evaluation"),
        "cond": ("condition could not be evaluated: step 'cond'", "the limit of a value's size"),
        "jmes": ("step 'jmes': JMESPath", "5000000 characters or items"),
    }  # fmt: skip
    for sid, (start_of, limit) in expected.items():
        s = steps[sid]
        assert s.status == "failed", (sid, s.status, s.error)
        assert start_of in (s.error or "") and limit in (s.error or ""), (sid, s.error)
        assert s.attempts <= 1, (sid, s.attempts)  # not retried: it would fail again
        if s.started_at and s.completed_at:
            assert (s.completed_at - s.started_at).total_seconds() < 10, (sid, s)
    assert took < 60, f"the plans took {took:.1f} s"

    # The worker's memory stayed small.
    # The worker here is this test process, which in a full run already holds hundreds of
    # MB of other tests' state: what the hostile plans may add is bounded, so that a worker
    # process (about 200 MB when it starts) stays under MAX_RSS_MB.
    grew = peak - rss_before
    assert grew < MAX_RSS_MB - WORKER_START_MB, (
        f"peak RSS {peak} MB, {grew} MB more than the {rss_before} MB before the plans"
    )

    # No workflow task failed, in any of the plans.
    for p in [hostile, *benign]:
        assert await workflow_task_failures(client, p.workflow_id) == [], p.id
