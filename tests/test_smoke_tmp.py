from tests.helpers import make_plan, start, status
from tests.tools_for_tests import CALLS

async def test_diamond(client, worker, task_queue):
    plan = make_plan([
        {"id": "a", "tool": "count", "params": {"key": "a", "value": 1}},
        {"id": "b", "tool": "count", "params": {"key": "b", "value": "{{ steps.a.output.value }}"}, "depends_on": ["a"]},
        {"id": "c", "tool": "wait", "params": {"seconds": 0.1}, "depends_on": ["a"]},
        {"id": "d", "tool": "transform", "params": {"data": "{{ steps.b.output }}", "expression": "value"}, "depends_on": ["b", "c"]},
    ])
    h = await start(client, plan, task_queue)
    res = await h.result()
    print(res)
    st = await status(h)
    print(st.model_dump_json(indent=1)[:3000])
    assert res.status == "completed"
