"""What the LLM layer keeps: models configured at run time, lessons people taught, and
a record of every planner run.

Like the store's other writes (:mod:`store.recording`), every function takes a session the caller commits
(``store.db.session_scope(engine, write=True)``).

Lessons are matched to a new task by plain text similarity (no model to download): the
words a task shares with the lesson's task (Jaccard over content words) and the tools
they have in common.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from contracts.snapshots import PlanSnapshot
from plans.models import Plan, PlanStatus
from plans.run_state import SkipReason
from store.db import session_scope
from store.models import LessonRecord, ModelConfigRecord, PlanGenerationRecord

MIN_LESSON_SCORE = 0.12
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "into",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "so",
        "that",
        "the",
        "then",
        "this",
        "to",
        "was",
        "were",
        "will",
        "with",
        "them",
        "their",
        "it's",
        "our",
        "your",
        "you",
        "we",
        "i",
    ]
)


def _now() -> datetime:
    return datetime.now(UTC)


# --- models ---------------------------------------------------------------------------


def _model_dict(row: ModelConfigRecord) -> dict[str, Any]:
    return {
        "name": row.name,
        "capabilities": list(row.capabilities),
        "max_tokens": row.max_tokens,
        "priority": row.priority,
        "enabled": row.enabled,
        "provider": row.provider or "anthropic",
        "updated_at": row.updated_at,
    }


def list_model_configs(session: Session) -> list[dict[str, Any]]:
    """Every model configured in the store (enabled or not), by priority then name."""
    rows = session.exec(
        select(ModelConfigRecord).order_by(
            col(ModelConfigRecord.priority), col(ModelConfigRecord.name)
        )
    ).all()
    return [_model_dict(r) for r in rows]


def put_model_config(
    session: Session,
    *,
    name: str,
    capabilities: Iterable[str],
    max_tokens: int = 4096,
    priority: int = 100,
    enabled: bool = True,
    provider: str = "anthropic",
) -> dict[str, Any]:
    """Create or replace the store's configuration of model ``name``."""
    row = session.get(ModelConfigRecord, name) or ModelConfigRecord(name=name, updated_at=_now())
    row.capabilities = sorted(set(capabilities))
    row.max_tokens = max_tokens
    row.priority = priority
    row.enabled = enabled
    row.provider = provider
    row.updated_at = _now()
    session.add(row)
    session.flush()
    return _model_dict(row)


def delete_model_config(session: Session, name: str) -> bool:
    row = session.get(ModelConfigRecord, name)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


# --- lessons --------------------------------------------------------------------------


def words(text: str) -> set[str]:
    """The content words of ``text``, lower-cased, with a light English stemming."""
    out = set()
    for w in _WORD.findall(text.lower()):
        if w in _STOP or len(w) < 2:
            continue
        for suffix in ("ing", "ed", "es", "s"):
            if len(w) > len(suffix) + 3 and w.endswith(suffix):
                w = w[: -len(suffix)]
                break
        out.add(w)
    return out


def similarity(
    task: str, tools: Iterable[str], lesson_task: str, lesson_tools: Iterable[str]
) -> float:
    """0..1: how much a lesson learnt on one task applies to another."""
    a, b = words(task), words(lesson_task)
    text = len(a & b) / len(a | b) if a and b else 0.0
    ta, tb = set(tools), set(lesson_tools)
    tool = len(ta & tb) / len(tb) if ta and tb else 0.0
    return round(0.7 * text + 0.3 * tool, 4)


def lesson_summary(lesson: dict[str, Any] | LessonRecord) -> str:
    d = lesson if isinstance(lesson, dict) else lesson.model_dump()
    where = f" (step {d['step_id']})" if d.get("step_id") else ""
    tools = f" [tools: {', '.join(d['tools'])}]" if d.get("tools") else ""
    fix = f" Do instead: {d['fix']}" if d.get("fix") else ""
    return f"{d['source']}{where}{tools}: {d['what_wrong']}.{fix}".strip()


def _lesson_dict(row: LessonRecord, score: float | None = None) -> dict[str, Any]:
    d = row.model_dump()
    d["summary"] = lesson_summary(row)
    if score is not None:
        d["score"] = score
    return d


def add_lesson(
    session: Session,
    *,
    source: str,
    what_wrong: str,
    fix: str = "",
    change: dict[str, Any] | None = None,
    task: str = "",
    tools: Iterable[str] = (),
    plan_id: str | None = None,
    step_id: str | None = None,
    agent_id: str | None = None,
    by: str | None = None,
    step_kind: str | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """Keep a lesson; the same lesson from the same plan and step is kept once."""
    existing = session.exec(
        select(LessonRecord).where(
            LessonRecord.plan_id == plan_id,
            LessonRecord.source == source,
            LessonRecord.step_id == step_id,
            LessonRecord.what_wrong == what_wrong,
            LessonRecord.fix == fix,
        )
    ).first()
    if existing is not None:
        return _lesson_dict(existing)
    row = LessonRecord(
        created_at=at or _now(),
        source=source,
        plan_id=plan_id,
        step_id=step_id,
        agent_id=agent_id,
        by=by,
        task=task,
        tools=sorted(set(tools)),
        step_kind=step_kind,
        what_wrong=what_wrong,
        fix=fix,
        change=change or {},
    )
    session.add(row)
    session.flush()
    return _lesson_dict(row)


def list_lessons(session: Session, *, limit: int = 100) -> list[dict[str, Any]]:
    rows = session.exec(
        select(LessonRecord).order_by(col(LessonRecord.created_at).desc()).limit(limit)
    ).all()
    return [_lesson_dict(r) for r in rows]


def relevant_lessons(
    session: Session, task: str, tools: Iterable[str] = (), *, limit: int = 5, scan: int = 2000
) -> list[dict[str, Any]]:
    """The lessons that apply best to ``task`` using ``tools``: best match first, newer
    first on a tie; those below :data:`MIN_LESSON_SCORE` are left out."""
    tools = list(tools)
    rows = session.exec(
        select(LessonRecord).order_by(col(LessonRecord.created_at).desc()).limit(scan)
    ).all()
    scored = [(similarity(task, tools, r.task, r.tools), i, r) for i, r in enumerate(rows)]
    scored = [s for s in scored if s[0] >= MIN_LESSON_SCORE]
    scored.sort(key=lambda s: (-s[0], s[1]))
    return [_lesson_dict(r, score) for score, _, r in scored[:limit]]


def mark_lessons_applied(session: Session, ids: Iterable[int]) -> None:
    for lesson_id in set(ids):
        row = session.get(LessonRecord, lesson_id)
        if row is not None:
            row.times_applied += 1
            session.add(row)
    session.flush()


# --- learning from people -------------------------------------------------------------


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _param_changes(old: Any, new: Any) -> dict[str, dict[str, Any]]:
    old = old if isinstance(old, dict) else {}
    new = new if isinstance(new, dict) else {}
    return {
        k: {"old": old.get(k), "new": new.get(k)}
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    }


def learn_from_snapshot(session: Session, snap: PlanSnapshot, plan: Plan | None) -> int:
    """Turn what people did to a plan into lessons: a rejection (with its reason), a
    step's correction (what changed, field by field), a rejected step, an answered
    question. Idempotent: a snapshot sent again adds nothing. Returns lessons added."""
    if plan is None:
        return 0
    # (an offline planner's description says how the plan was made, not what it does)
    description = "" if plan.description.startswith("[offline]") else plan.description
    task = "\n".join(t for t in (plan.title, description) if t)
    tools = sorted({s.tool for s in plan.steps if s.tool})
    steps = plan.step_map()

    def add(**fields: Any) -> None:
        add_lesson(session, task=task, plan_id=snap.plan_id, agent_id=snap.agent_id, **fields)

    before = session.exec(select(sa.func.count()).select_from(LessonRecord)).one()
    # (a timeout is never taken for a person's decision: only "rejected by <who>" counts)
    if snap.status == PlanStatus.REJECTED and (snap.outcome or "").startswith("rejected by "):
        by, _, reason = (snap.outcome or "").removeprefix("rejected by ").partition(": ")
        add(
            source="rejection",
            what_wrong=f"a person rejected the whole plan: {reason or snap.outcome}",
            fix="avoid what the reason objects to",
            tools=tools,
            by=by or None,
        )
    for v in snap.versions:
        if not v.step_id or not v.diff.get(v.step_id):
            continue
        fields = dict(v.diff[v.step_id])
        step = steps.get(v.step_id)
        tool = (fields.get("tool") or {}).get("new") or (step.tool if step else None)
        raw = fields.pop("params", None)
        params = _param_changes(raw.get("old"), raw.get("new")) if raw else {}
        wrong = [f"params.{k} was {_short(c['old'])}" for k, c in params.items()]
        wrong += [f"{f} was {_short(c['old'])}" for f, c in fields.items()]
        fix = [f"params.{k}: {_short(c['new'])}" for k, c in params.items()]
        fix += [f"{f}: {_short(c['new'])}" for f, c in fields.items()]
        add(
            source="correction",
            step_id=v.step_id,
            step_kind=step.kind.value if step else None,
            what_wrong=f"step {v.step_id}"
            + (f" ({tool})" if tool else "")
            + ": "
            + "; ".join(wrong),
            fix="; ".join(fix),
            change={
                "tool": tool,
                "step_kind": step.kind.value if step else None,
                "params": params,
                "fields": fields,
            },
            tools=[tool] if tool else [],
            by=v.by,
        )
    for s in snap.steps:
        step = steps.get(s.id)
        tool_tag = f" ({step.tool})" if step and step.tool else ""
        detail = s.skip_detail or ""
        if s.skip_reason == SkipReason.REJECTED and detail.startswith("rejected by "):
            by, _, reason = detail.removeprefix("rejected by ").partition(": ")
            add(
                source="rejection",
                step_id=s.id,
                step_kind=step.kind.value if step else None,
                what_wrong=f"a person refused to let step {s.id}{tool_tag} run: "
                + (reason or detail),
                fix="leave such a step out, or change it so the reason no longer holds",
                tools=[step.tool] if step and step.tool else [],
                by=by or None,
            )
        if s.answered and step is not None and step.clarification_question:
            add(
                source="clarification",
                step_id=s.id,
                step_kind=step.kind.value,
                what_wrong=f"step {s.id}{tool_tag} had to ask: {step.clarification_question}",
                fix=f"the answer was {_short(s.answer)}; put it in the plan up front",
                tools=[step.tool] if step.tool else [],
            )
    after = session.exec(select(sa.func.count()).select_from(LessonRecord)).one()
    return int(after - before)


# --- planner runs ---------------------------------------------------------------------


def record_generation(session: Session, **fields: Any) -> None:
    """Keep one planner run (idempotent by its id: a retried activity writes it once)."""
    if session.get(PlanGenerationRecord, fields["id"]) is not None:
        return
    fields.setdefault("created_at", _now())
    repairs = fields.get("repairs") or []
    fields.setdefault("problems", sum(len(r) for r in repairs))
    session.add(PlanGenerationRecord(**fields))
    session.flush()


def link_generation(session: Session, generation_id: str, plan_id: str) -> bool:
    """Record which plan a planner run became (when it was saved as a plan)."""
    row = session.get(PlanGenerationRecord, generation_id)
    if row is None:
        return False
    row.plan_id = plan_id
    session.add(row)
    session.flush()
    return True


def list_generations(session: Session, *, limit: int = 1000) -> list[PlanGenerationRecord]:
    return list(
        session.exec(
            select(PlanGenerationRecord)
            .order_by(col(PlanGenerationRecord.created_at).desc())
            .limit(limit)
        ).all()
    )


def link_generation_quietly(engine: Engine, generation_id: str | None, plan_id: str) -> None:
    """Note in the planner run's record which plan it became (metrics read it); a
    warning, never an error, when the store cannot be written. Blocking."""
    if not generation_id:
        return
    try:
        with session_scope(engine, write=True) as session:
            link_generation(session, generation_id, plan_id)
    except Exception as e:
        logging.getLogger("plansmith.store").warning(
            "could not link planner run %s to plan %s: %s", generation_id, plan_id, e
        )
