"""Risk, trust and the adaptive approval policy, as pure code (no Temporal, no store).

Risk: each signal raises a step's level and is listed as a sentence naming the step and
the evidence. Trust: the Bayesian average with its prior, recency and the weights of
person-approved vs unattended runs. Policy: thresholds per trust level, configurable, and
a critical step always gated. Engine: the decision becomes step gates that approve_step /
reject_step open and close like any other gate.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from activities.approval import decide, load_history
from config import ConfigError, PolicyThresholds, load_settings, parse_thresholds
from contracts.approval import AssessApprovalInput
from plans.approval_gate import apply_policy_decision, needs_approval, unattended_critical_steps
from plans.deadlines import expire_waits
from plans.models import Plan, PlanStatus, StepStatus, ToolSpec
from plans.policy import (
    ApprovalDecision,
    TrustHistory,
    TrustRun,
    compute_trust,
    decide_as_new_agent,
    decide_without_trust,
    fresh_trust,
    is_person,
    should_require_approval,
)
from plans.risk import assess_risk
from plans.run_state import Approval, new_run
from plans.scheduler import advance
from plans.steering import apply_control, parse_control
from plans.views import status_view, waits
from store.db import get_engine

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
OPEN: dict[str, Any] = {"type": "object"}
CATALOG: dict[str, ToolSpec] = {
    "noop": ToolSpec(name="noop", description="nothing", params_schema=OPEN),
    "http": ToolSpec(name="http", description="http", params_schema=OPEN, risk="medium"),
    "danger": ToolSpec(name="danger", description="high", params_schema=OPEN, risk="high"),
    "nuke": ToolSpec(name="nuke", description="critical", params_schema=OPEN, risk="critical"),
    "once": ToolSpec(name="once", description="once", params_schema=OPEN, idempotent=False),
    "code": ToolSpec(name="code", description="code", params_schema=OPEN, risk="medium"),
}


def plan_of(
    steps: list[dict[str, Any]], inputs: dict[str, Any] | None = None, **options: Any
) -> Plan:
    return Plan.model_validate(
        {
            "id": "p1",
            "agent_id": "bot",
            "inputs": inputs or {},
            "options": {"require_approval": "auto", **options},
            "steps": steps,
        }
    )


def http(sid: str, url: str, method: str = "GET", **params: Any) -> dict[str, Any]:
    return {"id": sid, "tool": "http", "params": {"url": url, "method": method, **params}}


def risk_of(*steps: dict[str, Any], inputs: dict[str, Any] | None = None) -> Any:
    return assess_risk(plan_of(list(steps), inputs), CATALOG)


# --- risk --------------------------------------------------------------------------


def test_declared_tool_risk_is_the_floor_and_is_named() -> None:
    r = risk_of({"id": "a", "tool": "noop"}, {"id": "b", "tool": "danger"})
    assert r.steps["a"].level == "low" and r.steps["b"].level == "high"
    assert r.level == "high"
    assert "step b: tool danger is declared high-risk" in r.reasons
    assert r.above_low().steps.keys() == {"b"}
    low = risk_of({"id": "a", "tool": "noop"})
    assert low.level == "low" and "every step is low-risk" in low.reasons[0]


def test_delete_on_a_production_target_is_critical_with_the_evidence() -> None:
    r = risk_of(http("wipe", "https://db.prod.example.com/tables/users", "DELETE"))
    assert r.level == "critical"
    assert r.reasons[0] == (
        "step wipe: deletion on a production target "
        "(DELETE https://db.prod.example.com/tables/users)"
    )
    assert r.steps["wipe"].top == [
        "deletion on a production target (DELETE https://db.prod.example.com/tables/users)"
    ]


def test_templates_on_inputs_are_filled_in_before_scanning() -> None:
    r = risk_of(
        http("wipe", "{{ inputs.base }}/v1/users", "DELETE"),
        inputs={"base": "https://api.production.example.com"},
    )
    assert r.level == "critical"
    assert "https://api.production.example.com/v1/users" in r.reasons[0]


def test_a_host_known_only_at_run_time_counts_as_external() -> None:
    r = risk_of(http("put", "{{ steps.find.output.url }}", "PUT"))
    assert r.level == "high"
    assert any("a host not known before the run" in x for x in r.reasons)


def test_external_writes_are_high_and_local_writes_are_not() -> None:
    assert risk_of(http("a", "https://api.example.com/items", "POST")).level == "high"
    assert any(
        "external write (POST https://api.example.com/items)" in x
        for x in risk_of(http("a", "https://api.example.com/items", "POST")).reasons
    )
    for url in ("http://127.0.0.1:8080/items", "http://localhost/x", "http://[::1]:9/x"):
        assert risk_of(http("a", url, "POST")).level == "medium", url


def test_reads_are_not_deletions_or_payments_because_of_their_url() -> None:
    r = risk_of(http("look", "https://api.prod.example.com/users/delete?refund=1"))
    assert r.level == "medium"
    assert r.reasons == [
        "step look: tool http is declared medium-risk",
        "step look: production target (https://api.prod.example.com/users/delete?refund=1)",
    ]


def test_production_words_do_not_match_inside_other_words() -> None:
    for url in ("https://products.example.com/x", "https://preprod.example.com/x"):
        assert risk_of(http("a", url)).level == "medium"
        assert not any("production" in x for x in risk_of(http("a", url)).reasons)


@pytest.mark.parametrize(
    ("params", "evidence"),
    [
        ({"url": "https://api.stripe.com/v1/charges", "method": "POST"}, "stripe.com"),
        (
            {"url": "https://shop.example.com/orders", "method": "POST", "json": {"amount": 120}},
            "amount=120",
        ),
        (
            {"url": "https://shop.example.com/orders", "method": "POST", "body": "pay $120 now"},
            "$1",
        ),
        (
            {"url": "https://shop.example.com/orders", "method": "POST", "body": "total 99.50 EUR"},
            "EUR",
        ),
    ],
)
def test_money_is_high_risk(params: dict[str, Any], evidence: str) -> None:
    r = risk_of({"id": "pay", "tool": "http", "params": params})
    assert r.level == "high"
    assert any("payment or money" in x and evidence in x for x in r.reasons), r.reasons


def test_money_written_to_production_is_critical() -> None:
    r = risk_of(http("refund", "https://payments.prod.example.com/v1/refunds", "POST"))
    assert r.level == "critical"
    assert r.reasons[0].startswith("step refund: moves money on a production target")


@pytest.mark.parametrize(
    "code",
    [
        "cur.execute('DROP TABLE users')",
        "subprocess.run('rm -rf /data', shell=True)",
        "shutil.rmtree(path)",
        "db.query('TRUNCATE orders')",
        "db.query('delete from orders where 1=1')",
    ],
)
def test_deletion_in_code_is_high_and_critical_next_to_production(code: str) -> None:
    step = {"id": "py", "tool": "code", "params": {"code": code}}
    assert risk_of(step).level == "high"
    assert any(x.startswith("step py: deletion (") for x in risk_of(step).reasons)
    prod = {"id": "py", "tool": "code", "params": {"code": code, "env": "production"}}
    r = risk_of(prod)
    assert r.level == "critical"
    assert "deletion on a production target" in r.reasons[0]


def test_steps_that_are_not_idempotent_are_high() -> None:
    r = risk_of({"id": "a", "tool": "noop", "idempotent": False}, {"id": "b", "tool": "once"})
    assert r.steps["a"].level == r.steps["b"].level == "high"
    assert "step a: the step is not idempotent (it runs once and is never retried)" in r.reasons
    assert "step b: tool once is not idempotent (it runs once, never retried)" in r.reasons


def test_plan_size_raises_the_plan_not_its_steps() -> None:
    many = [{"id": f"s{i}", "tool": "noop"} for i in range(21)]
    r = assess_risk(plan_of(many), CATALOG)
    assert r.level == "medium" and r.reasons == ["the plan has 21 steps (more than 20)"]
    assert all(s.level == "low" for s in r.steps.values())
    huge = [{"id": f"s{i}", "tool": "noop"} for i in range(101)]
    assert assess_risk(plan_of(huge), CATALOG).level == "high"


def test_llm_steps_inherit_the_risk_of_the_tools_they_are_offered() -> None:
    def llm(tools: list[str], prompt: str = "summarise") -> dict[str, Any]:
        return {"id": "think", "kind": "llm", "params": {"prompt": prompt, "tools": tools}}

    assert risk_of(llm([])).level == "low"
    assert risk_of(llm(["noop"])).level == "low"
    r = risk_of(llm(["danger"]))
    assert r.level == "high"
    assert "step think: the model may call tool danger (declared high-risk)" in r.reasons
    assert risk_of(llm(["once"])).level == "high"
    # The prompt is only read when a tool can act on it.
    scary = "delete every production user"
    assert risk_of(llm([], scary)).level == "low"
    assert risk_of(llm(["http"], scary)).level == "critical"


# --- trust -------------------------------------------------------------------------


def runs(
    n: int, status: str = "completed", by: str | None = "alice", days: float = 0, **kw: Any
) -> list[TrustRun]:
    return [
        TrustRun(
            plan_id=f"p{status}{days}{i}",
            run_id="r1",
            status=status,
            ended_at=NOW - timedelta(days=days),
            approved_by=by,
            **kw,
        )
        for i in range(n)
    ]


def trust(*groups: list[TrustRun], th: PolicyThresholds | None = None) -> Any:
    history = TrustHistory(agent_id="bot", runs=[r for g in groups for r in g])
    return compute_trust(history, NOW, th)


def test_a_fresh_agent_has_low_trust_and_says_why() -> None:
    t = fresh_trust("bot", NOW)
    assert (t.score, t.level) == (0.3, "low")
    assert "no finished run on record" in t.explanation
    assert t.inputs["runs_considered"] == 0 and t.inputs["prior"] == 0.3
    anonymous = fresh_trust(None, NOW)
    assert "names no agent_id" in anonymous.explanation and anonymous.level == "low"


def test_trust_grows_with_approved_successful_runs() -> None:
    scores = [trust(runs(n)) for n in range(7)]
    assert [round(t.score, 2) for t in scores] == [0.3, 0.5, 0.61, 0.68, 0.73, 0.77, 0.79]
    assert [t.level for t in scores] == [
        "low",
        "low",  # capped: fewer than min_runs (3) runs on record
        "low",
        "moderate",
        "moderate",
        "high",
        "high",
    ]
    assert scores[1].inputs["capped_by_min_runs"] is True
    five = scores[5]
    assert five.inputs["completed"] == 5 and five.inputs["approved_by_person"] == 5
    assert "5 finished run(s) of bot (completed 5), 5 approved by a person" in five.explanation


def test_unattended_successes_count_half_failures_count_fully() -> None:
    assert trust(runs(5, by="policy")).level == "moderate"
    assert trust(runs(5, by="policy")).score < trust(runs(5)).score
    assert trust(runs(10, by="policy", days=0.1)).level == "high"
    failed_unattended = trust(runs(5), runs(1, "failed", by="policy"))
    failed_vouched = trust(runs(5), runs(1, "failed"))
    assert failed_unattended.score == failed_vouched.score < trust(runs(5)).score


def test_old_runs_count_less() -> None:
    fresh, month, quarter = trust(runs(5)), trust(runs(5, days=30)), trust(runs(5, days=90))
    assert fresh.level == "high" and month.level == "moderate" and quarter.level == "low"
    assert fresh.score > month.score > quarter.score > 0.3
    assert month.inputs["evidence_for"] == pytest.approx(2.5)  # half-life 30 days
    short = PolicyThresholds.model_validate({"trust": {"half_life_days": 7}})
    assert trust(runs(5, days=30), th=short).score < month.score


def test_failures_rejections_and_corrections_pull_trust_down() -> None:
    base = trust(runs(6)).score
    assert trust(runs(6), runs(1, "failed")).score < base
    assert trust(runs(6), runs(1, "rejected", by=None, rejected_by="bob")).score < base
    assert trust(runs(5), runs(1, corrections=2)).score < base
    assert trust(runs(5), runs(1, step_rejections=1)).score < base
    partial = trust(runs(5), runs(1, "partial"))
    assert trust(runs(6)).score > partial.score > trust(runs(5), runs(1, "failed")).score
    t = trust(runs(5), runs(1, corrections=2, step_rejections=1))
    assert t.inputs["corrections"] == 2 and t.inputs["step_rejections"] == 1
    assert "2 correction(s) and 1 rejected step(s) pulled it down" in t.explanation
    bad = trust(runs(3, "rejected", by=None, rejected_by="bob"))
    assert bad.level == "untrusted"


def test_cancelled_runs_and_unanswered_rejections_are_left_out() -> None:
    t = trust(runs(5), runs(3, "cancelled"), runs(2, "rejected", by=None, rejected_by=None))
    assert t.score == trust(runs(5)).score
    assert t.inputs["left_out"] == {"cancelled": 3, "rejected_unanswered": 2}
    assert t.inputs["runs_considered"] == 5


def test_people_and_system_actors() -> None:
    assert is_person("alice") and is_person("ops@example.com")
    for actor in ("policy", "system:timeout", "temporal", "sandbox", None, ""):
        assert not is_person(actor)


# --- the policy ----------------------------------------------------------------------


RISKY = [{"id": "send", "tool": "danger"}]
MEDIUM = [{"id": "fetch", "tool": "http", "params": {"url": "https://api.example.com/x"}}]
LOW = [{"id": "calc", "tool": "noop"}]
WIPE = http("wipe", "https://db.prod.example.com/tables/users", "DELETE")


def decide_for(steps: list[dict[str, Any]], t: Any, th: PolicyThresholds | None = None) -> Any:
    p = plan_of(steps)
    return should_require_approval(p, t, assess_risk(p, CATALOG), th)


def test_a_fresh_agents_risky_plan_needs_a_person_its_medium_plan_does_not() -> None:
    fresh = fresh_trust("bot", NOW)
    d = decide_for(RISKY, fresh)
    assert d.required and d.risk_level == "high" and d.max_unattended_risk == "medium"
    assert d.reasons[0] == "risk high: step send: tool danger is declared high-risk"
    assert d.reasons[1].startswith("trust 0.30 (low)")
    assert d.reasons[2] == (
        "a person must approve: the plan counts as high-risk, above the medium risk that low "
        "trust may run without a person"
    )
    assert not decide_for(MEDIUM, fresh).required
    assert not decide_for(LOW, fresh).required


def test_high_trust_runs_high_risk_plans_without_a_person() -> None:
    high = trust(runs(5))
    d = decide_for(RISKY, high)
    assert not d.required and d.trust_level == "high" and d.trust_score == high.score
    assert d.reasons[-1].startswith("no person needed: the plan counts as high-risk")


def test_untrusted_agents_always_need_a_person() -> None:
    bad = trust(runs(3, "rejected", by=None, rejected_by="bob"))
    d = decide_for(LOW, bad)
    assert d.required and d.max_unattended_risk is None
    assert "runs nothing without a person" in d.reasons[-1]


def test_a_critical_step_is_always_gated_whatever_the_trust() -> None:
    for t in (fresh_trust("bot", NOW), trust(runs(20))):
        d = decide_for([*LOW, WIPE], t)
        assert list(d.step_gates) == ["wipe"]
        assert "deletion on a production target" in d.step_gates["wipe"]
        assert "whatever the trust" in d.step_gates["wipe"]
        assert d.risk_level == "critical" and d.decision_risk == "high"
    # The plan itself: a person for a new agent, the policy for a trusted one.
    assert decide_for([*LOW, WIPE], fresh_trust("bot", NOW)).required
    assert not decide_for([*LOW, WIPE], trust(runs(20))).required
    assert decide_for([{"id": "n", "tool": "nuke"}], trust(runs(20))).step_gates.keys() == {"n"}


def test_a_critical_step_with_its_own_gate_needs_no_second_one() -> None:
    d = decide_for([{**WIPE, "requires_approval": True}], trust(runs(20)))
    assert d.step_gates == {} and not d.required


def test_thresholds_are_configurable() -> None:
    strict = parse_thresholds('{"max_unattended_risk": {"low": "low", "high": "medium"}}')
    assert decide_for(MEDIUM, fresh_trust("bot", NOW, strict), strict).required
    assert decide_for(RISKY, trust(runs(5), th=strict), strict).required
    gate_high = parse_thresholds('{"gate_level": "high"}')
    d = decide_for(RISKY, trust(runs(5)), gate_high)
    assert d.step_gates.keys() == {"send"} and d.decision_risk == "medium"
    levels = parse_thresholds('{"trust_levels": {"high": 0.9}, "min_runs": 0}')
    assert trust(runs(5), th=levels).level == "moderate"
    assert trust(runs(1), th=levels).level == "moderate"  # no min_runs cap
    assert parse_thresholds(None, 7).trust.half_life_days == 7
    for bad, needle in [
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"gate_level": "extreme"}', "gate_level"),
        ('{"trust_levels": {"low": 0.9}}', "must grow"),
    ]:
        with pytest.raises(ValueError, match=needle):
            parse_thresholds(bad)


def test_settings_read_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANSMITH_POLICY", '{"min_runs": 7}')
    monkeypatch.setenv("PLANSMITH_TRUST_HALF_LIFE_DAYS", "14")
    th = load_settings().policy.thresholds()
    assert th.min_runs == 7 and th.trust.half_life_days == 14
    monkeypatch.setenv("PLANSMITH_POLICY", '{"min_runs": -1}')
    with pytest.raises(ConfigError, match="PLANSMITH_POLICY"):
        load_settings()


def test_the_fallback_asks_a_person() -> None:
    for steps in (RISKY, MEDIUM, LOW):
        d = decide_without_trust(plan_of(steps), CATALOG, NOW, "the assessment failed: boom")
        assert d.source == "fallback" and d.required and d.trust_level == "low"
        assert d.trust_unread == "the assessment failed: boom"
        assert d.trust is not None and d.trust.inputs["history_error"].endswith("boom")
        assert "could not be read (the assessment failed: boom)" in d.reasons[1]
    run = new_run(plan_of(LOW), NOW)
    apply_policy_decision(run, decide_without_trust(run.plan, CATALOG, NOW, "boom"), NOW)
    assert needs_approval(run, CATALOG)[0] is True
    assert "[the trust could not be read (boom): a person is asked]" in run.audit[0].detail


def test_the_legacy_fallback_still_decides_as_for_a_new_agent_on_replay() -> None:
    """Runs recorded before the policy failed closed replay with the earlier rule."""
    d = decide_as_new_agent(plan_of(RISKY), CATALOG, NOW, "the assessment failed: boom")
    assert d.source == "fallback" and d.required and d.trust_level == "low"
    assert d.trust is not None and d.trust.inputs["history_error"].endswith("boom")
    assert d.trust_unread is None
    medium = decide_as_new_agent(plan_of(MEDIUM), CATALOG, NOW, "boom")
    assert not medium.required
    # a local write to production was medium then, and stays so for the replay
    local = [http("ship", "http://127.0.0.1:9/prod-deploy?env=production", "POST")]
    assert not decide_as_new_agent(plan_of(local), CATALOG, NOW, "boom").required
    assert decide_without_trust(plan_of(local), CATALOG, NOW, "boom").required


async def test_the_activity_degrades_to_no_trust_when_the_store_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import activities.approval as approval

    def broken(*args: Any) -> TrustHistory:
        raise ConnectionError("connection refused")

    monkeypatch.setattr(approval, "read_history", broken)
    engine = get_engine()
    history = await load_history(engine, "bot", 10)
    assert history.runs == [] and history.error is not None
    assert "store unreachable: ConnectionError: connection refused" in history.error
    inp = AssessApprovalInput(plan=plan_of(RISKY), tools=CATALOG, now=NOW)
    d = decide(inp, history, PolicyThresholds())
    assert d.required and "could not be read" in d.reasons[1]
    assert (await load_history(engine, None, 10)).agent_id is None
    # Fails closed: even a low-risk plan waits for a person when the trust is unknown.
    low = decide(
        AssessApprovalInput(plan=plan_of(LOW), tools=CATALOG, now=NOW), history, PolicyThresholds()
    )
    assert low.required and low.risk_level == "low"
    assert low.trust_unread is not None and "connection refused" in low.trust_unread
    assert low.reasons[-1].startswith("a person must approve: the trust could not be read (")


# --- the engine applies the decision -------------------------------------------------


def run_with(decision: ApprovalDecision, steps: list[dict[str, Any]]) -> Any:
    run = new_run(plan_of(steps), NOW)
    apply_policy_decision(run, decision, NOW)
    return run


def control(run: Any, name: str, **payload: Any) -> str:
    payload.setdefault("by", "alice")
    return apply_control(run, name, parse_control(name, payload), NOW, CATALOG)


def test_the_decision_gates_critical_steps_with_the_usual_step_gate() -> None:
    steps = [*LOW, {**WIPE, "depends_on": ["calc"]}]
    p = plan_of(steps)
    d = should_require_approval(p, trust(runs(20)), assess_risk(p, CATALOG))
    run = run_with(d, steps)
    assert needs_approval(run, CATALOG) == (False, "auto: " + d.summary())
    assert [(a.by, a.action, a.step_id) for a in run.audit] == [
        ("policy", "approval_policy", None),
        ("policy", "policy_gate", "wipe"),
    ]
    assert "no person needed: risk critical, trust of bot" in run.audit[0].detail
    run.approval = Approval(by="policy", at=NOW, version=1)
    assert advance(run, NOW) == ["calc"]
    from plans.scheduler import record_success

    record_success(run, "calc", {}, 1, NOW)
    assert advance(run, NOW) == []
    assert run.steps["wipe"].status == StepStatus.WAITING_APPROVAL
    wait = waits(run)[0]
    assert wait.kind == "step_approval" and wait.step_id == "wipe"
    assert wait.question is not None and "deletion on a production target" in wait.question
    view = status_view(run)
    assert view.status == PlanStatus.WAITING_APPROVAL
    assert view.approval_policy is not None and view.approval_policy.step_gates.keys() == {"wipe"}
    assert view.approval_policy.risk.steps.keys() == {"wipe"}  # low-risk steps are left out
    control(run, "approve_step", step_id="wipe")
    assert advance(run, NOW) == ["wipe"]


def test_a_rejected_policy_gate_skips_the_step() -> None:
    d = decide_for([WIPE], trust(runs(20)))
    run = run_with(d, [WIPE])
    run.approval = Approval(by="policy", at=NOW, version=1)
    advance(run, NOW)
    control(run, "reject_step", step_id="wipe", reason="not today")
    assert run.steps["wipe"].status == StepStatus.SKIPPED


def test_a_timeout_never_approves_a_policy_gate() -> None:
    steps = [WIPE]
    p = plan_of(steps, step_approval_timeout_s=5, on_step_approval_timeout="approve")
    run = new_run(p, NOW)
    apply_policy_decision(run, decide_for(steps, trust(runs(20))), NOW)
    run.approval = Approval(by="policy", at=NOW, version=1)
    advance(run, NOW)
    expire_waits(run, NOW + timedelta(seconds=6))
    s = run.steps["wipe"]
    assert s.status == StepStatus.SKIPPED and s.gate_approved_by is None
    assert s.timed_out is not None and "the approval policy gates this step" in s.timed_out


def test_a_correction_that_makes_a_step_critical_gates_it() -> None:
    steps = [{"id": "call", "tool": "http", "params": {"url": "https://api.example.com/x"}}]
    run = run_with(decide_for(steps, trust(runs(20))), steps)
    assert run.steps["call"].policy_gate is None
    detail = control(
        run,
        "apply_correction",
        step_id="call",
        correction={
            "updated_step": {"params": {"url": "https://db.prod.example.com/t", "method": "DELETE"}}
        },
    )
    assert "the approval policy now gates it (critical-risk)" in detail
    assert run.steps["call"].policy_gate is not None
    run.approval = Approval(by="policy", at=NOW, version=run.version)
    advance(run, NOW)
    assert run.steps["call"].status == StepStatus.WAITING_APPROVAL


def test_without_a_decision_auto_keeps_the_earlier_rule_for_replays() -> None:
    run = new_run(plan_of(RISKY), NOW)
    assert needs_approval(run, CATALOG) == (True, "auto: send uses high-risk tool danger")
    external = new_run(plan_of([http("a", "https://api.example.com", "POST")]), NOW)
    assert needs_approval(external, CATALOG)[0] is False  # the earlier rule did not look


def test_explicit_choices_stand_with_a_warning_for_critical_steps() -> None:
    for options in ({"require_approval": False}, {"auto_approve": True}):
        run = new_run(plan_of([WIPE], **options), NOW)
        assert needs_approval(run, CATALOG)[0] is False
        (warning,) = unattended_critical_steps(run, CATALOG)
        assert warning.startswith("wipe (deletion on a production target (DELETE https://db")
    run = new_run(plan_of([WIPE], require_approval=True), NOW)
    assert unattended_critical_steps(run, CATALOG) == []


def test_a_runs_decision_keeps_only_the_riskiest_steps() -> None:
    steps = [{"id": f"s{i}", "tool": "http"} for i in range(200)]
    steps += [{"id": "send", "tool": "danger"}]
    p = plan_of(steps)
    d = should_require_approval(p, fresh_trust("bot", NOW), assess_risk(p, CATALOG))
    assert len(d.risk.steps) == 50 and d.risk.steps_left_out == 151
    assert "send" in d.risk.steps  # the riskiest first
    assert len(d.model_dump_json()) < 30_000
