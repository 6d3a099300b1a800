"""Validation of big plans: linear, never recursive, the same answers as a plain
transitive closure (plans/validation.py, plans/dependency_graph.py)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from bench.big_documents import chain, full_dag
from contracts.tools import catalog
from plans.dependency_graph import Ancestry, ancestors, find_cycles
from plans.models import Plan
from plans.validation import PlanInvalid, load_document, validate_plan


def closure(deps: dict[str, list[str]]) -> dict[str, set[str]]:
    """The transitive dependencies by brute force (for small graphs)."""
    out: dict[str, set[str]] = {}
    for sid in deps:
        seen: set[str] = set()
        todo = [d for d in deps[sid] if d in deps]
        while todo:
            d = todo.pop()
            if d not in seen:
                seen.add(d)
                todo.extend(x for x in deps[d] if x in deps)
        seen.discard(sid)
        out[sid] = seen
    return out


def test_ancestry_matches_a_brute_force_closure_on_random_dags() -> None:
    rnd = random.Random(7)
    for _ in range(200):
        n = rnd.randint(1, 30)
        order = [f"s{i}" for i in range(n)]
        rnd.shuffle(order)  # listed in any order; edges only to earlier in ``order``
        steps: list[dict[str, Any]] = []
        for i, sid in enumerate(order):
            k = rnd.randint(0, min(i, 4))
            deps = rnd.sample(order[:i], k) + (["ghost"] if rnd.random() < 0.1 else [])
            steps.append({"id": sid, "tool": "wait", "depends_on": deps})
        rnd.shuffle(steps)
        plan = Plan.model_validate({"steps": steps})
        expected = closure({s.id: s.depends_on for s in plan.steps})
        assert ancestors(plan) == expected
        anc = Ancestry(plan)
        assert not anc.has_cycle
        for a in expected:
            for b in expected:
                assert anc.waits_for(a, b) == (b in expected[a]), (a, b)


def test_a_long_reversed_chain_is_neither_recursive_nor_quadratic() -> None:
    plan = Plan.model_validate(chain(5_000, reverse=True))
    assert validate_plan(plan, catalog()) == []
    anc = Ancestry(plan)
    assert anc.waits_for("s0", "s4999") and not anc.waits_for("s4999", "s0")


def test_a_long_cycle_is_found_once() -> None:
    doc = chain(5_000, reverse=True)
    doc["steps"][-1]["depends_on"] = ["s0"]
    plan = Plan.model_validate(doc)
    cycles = find_cycles(plan)
    assert len(cycles) == 1 and len(cycles[0]) == 5_001
    assert Ancestry(plan).has_cycle
    problems = validate_plan(plan, catalog())
    assert [p.location for p in problems] == ["steps[4999].depends_on"]
    assert problems[0].message.startswith("dependency cycle: s4999 -> s4998 -> s4997 -> ")
    assert problems[0].message.endswith(
        "-> s1 -> s0 -> s4999 (each step waits for the one before it)"
    )


def test_a_full_dag_validates() -> None:
    plan = Plan.model_validate(full_dag(300))
    assert validate_plan(plan, catalog()) == []
    assert Ancestry(plan).waits_for("s299", "s0")


def test_the_step_limit_is_one_problem_naming_it() -> None:
    plan = Plan.model_validate(chain(11))
    problems = validate_plan(plan, catalog(), max_steps=10)
    assert [str(p) for p in problems] == [
        "steps: a plan has at most 10 steps (PLANSMITH_MAX_PLAN_STEPS); this one has 11"
    ]
    assert validate_plan(plan, catalog(), max_steps=11) == []
    assert validate_plan(plan, catalog()) == []  # None: no limit


def test_unknown_names_among_many_steps_stay_cheap() -> None:
    doc = chain(3_000)
    for i, s in enumerate(doc["steps"]):
        s["depends_on"] = [f"missing-{i}"]
    problems = validate_plan(Plan.model_validate(doc), catalog())
    assert len(problems) == 3_000
    assert all("unknown step 'missing-" in p.message for p in problems)


def test_a_deeply_nested_document_is_a_located_problem() -> None:
    try:
        load_document("[" * 20_000 + "]" * 20_000, source="deep.yaml")
    except PlanInvalid as e:
        assert [str(p) for p in e.problems] == [
            "deep.yaml: the document is nested too deeply to be read"
        ]
    else:
        raise AssertionError("a 20,000-deep document was read")


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    names = "abcdefghijklmnop"
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['x'] * width)}]"]
    for i in range(1, levels):
        prev = names[i - 1]
        lines.append(f"{names[i]}: &{names[i]} [{', '.join(['*' + prev] * width)}]")
    last = names[levels - 1]
    lines.append(f"steps: [{{id: s, tool: wait, params: {{seconds: 0, result: *{last}}}}}]")
    return "\n".join(lines)


def test_a_yaml_alias_bomb_is_refused_before_it_is_built() -> None:
    """Nine levels of nine aliases: 400 bytes of text, 9^9 values once expanded. Refused
    from the node graph (each node sized once), never constructed."""
    import time

    from plans.validation import MAX_DOCUMENT_VALUES, PlanInvalid, load_document

    text = _alias_bomb()
    assert len(text) < 1000
    started = time.monotonic()
    with pytest.raises(PlanInvalid) as e:
        load_document(text, "bomb.yaml")
    assert time.monotonic() - started < 10
    (problem,) = e.value.problems
    assert problem.location == "bomb.yaml"
    assert f"more than {MAX_DOCUMENT_VALUES} values (YAML aliases)" in problem.message
    # aliases in moderation still work, and a self-referring one is refused
    small = load_document(_alias_bomb(levels=3, width=3))
    assert small["steps"][0]["params"]["result"] == [[["x"] * 3] * 3] * 3
    with pytest.raises(PlanInvalid, match="refers to a value that contains it"):
        load_document("a: &a [*a]\nsteps: []\n")
