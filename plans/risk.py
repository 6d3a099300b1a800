"""How risky a plan is, step by step, with the evidence: pure code, no I/O.

:func:`assess_risk` gives every step a level (``low < medium < high < critical``) and the
reasons for it, as sentences that name the step and what was found, and the plan the
highest of them (plus a size signal). The signals:

* the tool's declared risk (:class:`plans.models.ToolSpec.risk`) is the floor of a tool
  step; an llm step takes the highest declared risk of the tools it is offered;
* the tool's name: one that says it moves money (payments, transfer, payout, refund...),
  deletes or deploys -> ``high``, as when its parameters say so;
* the parameters, walked recursively (``{{ inputs.x }}`` templates are filled in from the
  plan's inputs; templates on earlier outputs stay as text, and a host that depends on
  them counts as unknown):

  - a write (``POST``/``PUT``/``PATCH``/``DELETE``, or a method not known before the run)
    to a production target -> ``high``, on any host, this machine included: the URL (host,
    path or query) or the body names production (``prod``, ``production``, ``prd``,
    ``env=production``) or a deploy (``deploy``, ``deployment``, ``rollout``); a URL is
    read percent-decoded (``/pr%6fd`` is ``/prod``), as its server reads it;
  - a production target named otherwise (a read, an environment name in text) -> at least
    ``medium``;
  - deletion (an HTTP ``DELETE`` anywhere, ``DROP TABLE``, ``TRUNCATE``, ``DELETE FROM``,
    ``rm -rf``, ``rmtree``, the words delete/destroy/wipe/purge/erase) -> ``high``;
    deletion on a production target -> ``critical``;
  - money (payment, charge, refund, payout, invoice, billing, withdrawal, a wire or bank
    transfer, a payment provider's host, an amount with a currency, an ``amount`` field;
    transfer/pay in a write's URL) -> ``high``; money written to a production target ->
    ``critical``;
  - an external write (``POST``/``PUT``/``PATCH``/``DELETE`` to a host that is not this
    machine, or to a host not known before the run) -> ``high``;
  - a request of any method that carries a ``{{ secrets.NAME }}`` (URL, headers, query,
    body) to a host that is not this machine or not known before the run -> ``high``
    (the external write level): a credential leaves the machine;

  a read (``GET``/``HEAD``/``OPTIONS``) is not a deletion or a payment because of words in
  its URL; an llm step's prompt is only read for these signals when it is offered a tool
  that can act (declared ``medium`` or more, or named as above), since text alone does
  nothing;
* a step that is not idempotent (runs once, never retried) -> ``high``;
* plan size: more than ``many_steps`` steps -> the plan is at least ``medium``, more than
  ``very_many_steps`` -> ``high``.

The words, hosts and levels are data (:class:`config.policy.RiskRules`, ``"risk"`` in
``PLANSMITH_POLICY``); the defaults are above.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field

from config.policy import LEVELS, RiskLevel, RiskRules
from plans.expressions import SECRET_REF_RE, TEMPLATE_RE, Budget, evaluate
from plans.models import PYTHON_TOOL, Plan, Step, StepKind, ToolSpec

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_PLAN_REASONS = 50  # the plan's list of reasons is cut here ("... and N more")
MAX_KEPT_STEPS = 50  # steps a run's decision keeps in its state (the riskiest)
EVIDENCE_CHARS = 80  # quoted evidence is cut to this length
MAX_DEPTH = 20  # params nested deeper than this are not read (a plan is validated JSON)
# params of an llm step that are text the model reads (the rest configures the call)
LLM_TEXT_PARAMS = ("prompt", "system", "input")


def rank(level: RiskLevel) -> int:
    return LEVELS.index(level)


def highest(levels: Iterable[RiskLevel]) -> RiskLevel:
    return max(levels, key=rank, default="low")


def at_least(level: RiskLevel, floor: RiskLevel) -> bool:
    return rank(level) >= rank(floor)


class StepRisk(BaseModel):
    level: RiskLevel = "low"
    reasons: list[str] = Field(default_factory=list)
    top: list[str] = Field(
        default_factory=list, description="the reasons that set the level (a subset of reasons)"
    )


class PlanRisk(BaseModel):
    level: RiskLevel = "low"
    reasons: list[str] = Field(default_factory=list)
    steps: dict[str, StepRisk] = Field(
        default_factory=dict, description="every step's level and reasons"
    )
    steps_left_out: int = Field(
        default=0, description="steps above low not listed in `steps` (see above_low)"
    )

    def above_low(self, limit: int = MAX_KEPT_STEPS) -> PlanRisk:
        """The same assessment with only the riskiest ``limit`` steps above low (what a run
        keeps in its state: a 2,000-step plan must not carry 2,000 entries around)."""
        risky = [(k, v) for k, v in self.steps.items() if v.level != "low"]
        kept = dict(sorted(risky, key=lambda kv: -rank(kv[1].level))[:limit])
        steps = {k: v for k, v in self.steps.items() if k in kept}  # in plan order
        return self.model_copy(update={"steps": steps, "steps_left_out": len(risky) - len(steps)})


# --- signals in text -----------------------------------------------------------------

_B = r"(?<![a-z0-9])"  # a word boundary where '_', '-', '.', '/', '=' separate words
_E = r"(?![a-z0-9])"
# Always deletions, whatever the configured words.
SQL_DELETION_RES = (
    re.compile(r"\b(drop|truncate)\s+(table|database|schema|index|view|collection)\b", re.I),
    re.compile(r"\btruncate\b", re.I),
    re.compile(r"\bdelete\s+from\b", re.I),
    re.compile(r"\brm\s+(-[a-z]*\s+)*-[a-z]*[rf][a-z]*\b", re.I),
    re.compile(r"\b(shutil\.rmtree|os\.remove|os\.unlink|os\.rmdir)\b", re.I),
)
_CURRENCIES = r"(usd|eur|gbp|jpy|cny|rub|chf|cad|aud|inr|btc|eth|usdt)"
# Always money, whatever the configured words: amounts with a currency.
AMOUNT_RES = (
    re.compile(r"[$€£¥₽]\s?\d", re.I),
    re.compile(r"\d[\d,]*(\.\d+)?\s?" + _CURRENCIES + _E, re.I),
    re.compile(_B + _CURRENCIES + r"\s?\d", re.I),
)


def words_re(words: Iterable[str]) -> re.Pattern[str] | None:
    """One pattern for whole ``words`` (a plural ``s`` too; a space in a word matches a
    space, ``-``, ``_`` or nothing); None when there are none."""
    alts = []
    for w in sorted({w.strip().lower() for w in words if w and w.strip()}, key=len, reverse=True):
        alts.append(r"[\s_-]?".join(re.escape(part) for part in w.split()))
    if not alts:
        return None
    return re.compile(_B + "(" + "|".join(alts) + ")s?" + _E, re.I)


def hosts_re(hosts: Iterable[str]) -> re.Pattern[str] | None:
    alts = [re.escape(h.strip().lower()) for h in hosts if h and h.strip()]
    if not alts:
        return None
    return re.compile(_B + "(" + "|".join(alts) + ")" + _E, re.I)


@dataclass(frozen=True)
class Signals:
    """The patterns of one :class:`config.policy.RiskRules`."""

    rules: RiskRules
    production: tuple[re.Pattern[str], ...]
    deploy: tuple[re.Pattern[str], ...]
    deletion: tuple[re.Pattern[str], ...]
    money: tuple[re.Pattern[str], ...]
    money_write: tuple[re.Pattern[str], ...]


def _some(*patterns: re.Pattern[str] | None) -> tuple[re.Pattern[str], ...]:
    return tuple(p for p in patterns if p is not None)


@lru_cache(maxsize=16)
def _signals_of(key: str) -> Signals:
    rules = RiskRules.model_validate_json(key)
    return Signals(
        rules=rules,
        production=_some(words_re(rules.production_words)),
        deploy=_some(words_re(rules.deploy_words)),
        deletion=(*SQL_DELETION_RES, *_some(words_re(rules.deletion_words))),
        money=(
            *_some(words_re(rules.money_words), hosts_re(rules.payment_hosts)),
            *AMOUNT_RES,
        ),
        money_write=_some(words_re(rules.money_write_words)),
    )


def signals(rules: RiskRules | None = None) -> Signals:
    """The compiled patterns of ``rules`` (the defaults when None), cached."""
    return _signals_of((rules or RiskRules()).model_dump_json())


MONEY_KEY_RE = re.compile(r"^(amount|price|total)(_cents|_minor|_value)?$", re.I)


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EVIDENCE_CHARS else text[: EVIDENCE_CHARS - 3] + "..."


def _first(patterns: Iterable[re.Pattern[str]], text: str) -> str | None:
    """The first match of any pattern, quoted with a little of its context."""
    for p in patterns:
        m = p.search(text)
        if m:
            return _around(text, m)
    return None


def _around(text: str, m: re.Match[str]) -> str:
    if len(text) <= EVIDENCE_CHARS:
        return _quote(text)
    room = min(max((EVIDENCE_CHARS - (m.end() - m.start())) // 2, 0), 25)
    start, end = max(m.start() - room, 0), min(m.end() + room, len(text))
    return ("..." if start else "") + _quote(text[start:end]) + ("..." if end < len(text) else "")


def decoded_url(url: str) -> str:
    """``url`` as a server reads it: percent-escapes decoded until nothing changes (a few
    rounds), so ``/pr%6fd`` or ``/%2570roduction`` is read as the word it spells; a ``+``
    is a space."""
    text = url
    for _ in range(4):
        new = unquote(text.replace("+", " "))
        if new == text:
            break
        text = new
    return text


def _host_of(url: str) -> tuple[str | None, bool]:
    """(host, local) of a URL; host None when it is not known before the run."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return None, False
    if "{{" in parts.netloc or (not parts.netloc and "{{" in url):
        return None, False
    if not host:
        return None, False
    if host == "localhost" or host.endswith(".localhost"):
        return host, True
    try:
        return host, ipaddress.ip_address(host).is_loopback or host == "0.0.0.0"
    except ValueError:
        return host, False


class _Evidence:
    """What the walk over one step's params found."""

    def __init__(self, sig: Signals) -> None:
        self.sig = sig
        self.production: list[str] = []
        self.production_writes: list[str] = []  # "POST http://..." to a production target
        self.deletion: list[str] = []
        self.money: list[str] = []
        self.writes: list[str] = []  # "POST https://..." to a host that is not local
        self.local_writes: list[str] = []
        self.deletes_on_production: list[str] = []
        self.money_writes_on_production: list[str] = []
        # "secret(s) T sent to GET https://..." on a host that is not this machine
        self.secret_sends: list[str] = []

    def walk(self, value: Any, read_only: bool = False, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            return
        if isinstance(value, str):
            self.text(value, read_only)
        elif isinstance(value, dict):
            if isinstance(value.get("url"), str):
                self.request(value, depth)
                return
            for k, v in value.items():
                self.text(str(k), read_only)
                if (
                    not read_only
                    and MONEY_KEY_RE.match(str(k))
                    and isinstance(v, int | float)
                    and not isinstance(v, bool)
                ):
                    self.money.append(f"{k}={v}")
                self.walk(v, read_only, depth + 1)
        elif isinstance(value, list):
            for v in value:
                self.walk(v, read_only, depth + 1)

    def text(self, text: str, read_only: bool) -> None:
        found = _first(self.sig.production, text)
        if found:
            self.production.append(found)
        if read_only:
            return
        found = _first(self.sig.deletion, text)
        if found:
            self.deletion.append(found)
        found = _first(self.sig.money, text)
        if found:
            self.money.append(found)

    def request(self, req: dict[str, Any], depth: int) -> None:
        """A dict with a ``url``: an HTTP request (http_request's params, or nested)."""
        url = str(req["url"])
        raw = req.get("method", "GET")
        method = str(raw).upper() if isinstance(raw, str) else "GET"
        known = method in WRITE_METHODS or method in READ_METHODS
        write = method in WRITE_METHODS or not known
        label = f"{method if known else 'a method not known before the run'} {_quote(url)}"
        host, local = _host_of(url)
        prod_before, money_before = len(self.production), len(self.money)
        del_before = len(self.deletion)
        plain = decoded_url(url)  # percent-escapes hide no word: the server decodes them
        self.text(plain, read_only=not write)
        if write:
            (self.local_writes if local else self.writes).append(
                label if host else f"{label} (a host not known before the run)"
            )
        if method == "DELETE":
            self.deletion.append(label)
        if write:
            found = _first(self.sig.money_write, plain)
            if found:
                self.money.append(found)
        for k, v in req.items():
            if k in ("url", "method"):
                continue
            self.text(str(k), read_only=not write)
            self.walk(v, read_only=not write, depth=depth + 1)
        sent = sorted(set(SECRET_REF_RE.findall(_strings(req))))
        if sent and not local:
            where = label if host else f"{label} (a host not known before the run)"
            self.secret_sends.append(f"secret(s) {', '.join(sent)} sent with {where}")
        on_prod = len(self.production) > prod_before
        if write and (on_prod or _first(self.sig.deploy, plain) or self._deploy_in(req)):
            self.production_writes.append(label)
        if write and on_prod and (method == "DELETE" or len(self.deletion) > del_before):
            self.deletes_on_production.append(label)
        if write and on_prod and len(self.money) > money_before:
            self.money_writes_on_production.append(label)

    def _deploy_in(self, req: dict[str, Any]) -> bool:
        """A deploy word in a write's body or query (``{"action": "deploy"}``)."""
        found: list[bool] = []

        def look(v: Any, depth: int) -> None:
            if found or depth > MAX_DEPTH:
                return
            if isinstance(v, str):
                if _first(self.sig.deploy, v):
                    found.append(True)
            elif isinstance(v, dict):
                for k, x in v.items():
                    look(str(k), depth + 1)
                    look(x, depth + 1)
            elif isinstance(v, list):
                for x in v:
                    look(x, depth + 1)

        look({k: v for k, v in req.items() if k not in ("url", "method")}, 0)
        return bool(found)


def _strings(value: Any, depth: int = 0) -> str:
    """Every string in ``value`` (keys too), one per line."""
    if depth > MAX_DEPTH:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(f"{k}\n{_strings(v, depth + 1)}" for k, v in value.items())
    if isinstance(value, list):
        return "\n".join(_strings(v, depth + 1) for v in value)
    return ""


def _fill_inputs(
    value: Any, inputs: dict[str, Any], depth: int = 0, budget: Budget | None = None
) -> Any:
    """``value`` with ``{{ inputs... }}`` templates filled in; others stay as text. All
    of them share one evaluation budget: once spent, the rest stay as text too."""
    budget = budget or Budget()
    if depth > MAX_DEPTH:
        return value
    if isinstance(value, str):
        if "{{" not in value:
            return value
        whole = TEMPLATE_RE.fullmatch(value.strip())
        if whole and value.strip().count("{{") == 1:
            expr = whole.group(1)
            if expr.strip().startswith("inputs"):
                try:
                    return evaluate(expr, {"inputs": inputs}, budget)
                except Exception:
                    return value
            return value

        def one(m: re.Match[str]) -> str:
            if not m.group(1).strip().startswith("inputs"):
                return m.group(0)
            try:
                got = evaluate(m.group(1), {"inputs": inputs}, budget)
            except Exception:
                return m.group(0)
            return got if isinstance(got, str) else str(got)

        return TEMPLATE_RE.sub(one, value)
    if isinstance(value, dict):
        return {k: _fill_inputs(v, inputs, depth + 1, budget) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_inputs(v, inputs, depth + 1, budget) for v in value]
    return value


# --- steps and plans -----------------------------------------------------------------


def _tool_name_signals(name: str, sig: Signals) -> list[tuple[RiskLevel, str]]:
    """What a tool's name says it does: moves money, deletes, deploys."""
    rules = sig.rules
    if not rules.tool_names:
        return []
    words = name.replace(".", " ")
    out: list[tuple[RiskLevel, str]] = []
    money = _first((*sig.money, *sig.money_write), words)
    if money:
        out.append((rules.money_level, f"tool {name} moves money (its name says {money!r})"))
    deletion = _first(sig.deletion, words)
    if deletion:
        out.append((rules.deletion_level, f"tool {name} deletes (its name says {deletion!r})"))
    deploy = _first(sig.deploy, words)
    if deploy:
        out.append(
            (
                rules.production_write_level,
                f"tool {name} changes production (its name says {deploy!r})",
            )
        )
    return out


def assess_step(
    plan: Plan, step: Step, catalog: Mapping[str, ToolSpec], rules: RiskRules | None = None
) -> StepRisk:
    """One step's risk level and the reasons for it."""
    sig = signals(rules)
    rules = sig.rules
    sid = step.id
    levels: list[RiskLevel] = ["low"]
    reasons: list[str] = []

    found_at: list[tuple[RiskLevel, str]] = []

    def add(level: RiskLevel, reason: str) -> None:
        levels.append(level)
        reasons.append(f"step {sid}: {reason}")
        found_at.append((level, reason))

    scan: Any = None
    if step.kind == StepKind.TOOL:
        spec = catalog.get(step.tool or "")
        if spec is not None:
            add(spec.risk, f"tool {spec.name} is declared {spec.risk}-risk")
            if not spec.idempotent:
                add("high", f"tool {spec.name} is not idempotent (it runs once, never retried)")
        for level, why in _tool_name_signals(step.tool or "", sig):
            add(level, why)
        scan = step.params
    elif step.kind == StepKind.CODE:
        # generated code runs like a python step: the python tool's risk, its name's signals,
        # and the step's description and params scanned like a tool step's params
        spec = catalog.get(PYTHON_TOOL)
        add(
            spec.risk if spec is not None else "medium",
            f"the code model writes Python that runs in the sandbox ({PYTHON_TOOL} tool)",
        )
        for level, why in _tool_name_signals(PYTHON_TOOL, sig):
            add(level, why)
        scan = {"description": step.description, **step.params}
    elif step.kind == StepKind.LLM:
        offered = step.params.get("tools")
        acting = False
        for name in sorted(offered) if isinstance(offered, list) else []:
            spec = catalog.get(str(name))
            if spec is None:
                continue
            if spec.risk != "low":
                add(spec.risk, f"the model may call tool {spec.name} (declared {spec.risk}-risk)")
                acting = True
            if not spec.idempotent:
                add("high", f"the model may call tool {spec.name}, which is not idempotent")
                acting = True
            for level, why in _tool_name_signals(spec.name, sig):
                add(level, f"the model may call {why}")
                acting = True
        if acting:
            scan = {k: step.params[k] for k in LLM_TEXT_PARAMS if k in step.params}
    if not step.idempotent:
        add("high", "the step is not idempotent (it runs once and is never retried)")
    if scan:
        found = _Evidence(sig)
        found.walk(_fill_inputs(scan, plan.inputs))
        on_production = False  # a critical reason already names the production target
        if found.deletes_on_production:
            add("critical", f"deletion on a production target ({found.deletes_on_production[0]})")
            on_production = True
        elif found.deletion and found.production:
            deletion, prod = found.deletion[0], found.production[0]
            where = f"({deletion})" if deletion == prod else f"({deletion}; target: {prod})"
            add("critical", f"deletion on a production target {where}")
            on_production = True
        elif found.deletion:
            add(rules.deletion_level, f"deletion ({found.deletion[0]})")
        if found.money_writes_on_production:
            add(
                "critical",
                f"moves money on a production target ({found.money_writes_on_production[0]})",
            )
            on_production = True
        elif found.money:
            add(rules.money_level, f"payment or money ({found.money[0]})")
        if found.production_writes and not on_production:
            extra = (
                f" and {len(found.production_writes) - 1} more"
                if len(found.production_writes) > 1
                else ""
            )
            add(
                rules.production_write_level,
                f"write to a production target ({found.production_writes[0]}{extra})",
            )
            on_production = True
        if found.writes:
            extra = f" and {len(found.writes) - 1} more" if len(found.writes) > 1 else ""
            add(rules.external_write_level, f"external write ({found.writes[0]}{extra})")
        if found.secret_sends:
            extra = (
                f" and {len(found.secret_sends) - 1} more" if len(found.secret_sends) > 1 else ""
            )
            add(
                rules.external_write_level,
                f"sends a secret off this machine ({found.secret_sends[0]}{extra})",
            )
        if found.production and not on_production:
            add(rules.production_level, f"production target ({found.production[0]})")
    level = highest(levels)
    top = [reason for lv, reason in found_at if lv == level]
    return StepRisk(level=level, reasons=reasons, top=top)


def assess_risk(
    plan: Plan, catalog: Mapping[str, ToolSpec], rules: RiskRules | None = None
) -> PlanRisk:
    """Every step's risk and the plan's, with the reasons (see the module docstring)."""
    rules = rules or RiskRules()
    steps = {s.id: assess_step(plan, s, catalog, rules) for s in plan.steps}
    levels: list[RiskLevel] = [r.level for r in steps.values()]
    reasons: list[str] = []
    n = len(plan.steps)
    if n > rules.very_many_steps:
        levels.append("high")
        reasons.append(f"the plan has {n} steps (more than {rules.very_many_steps})")
    elif n > rules.many_steps:
        levels.append("medium")
        reasons.append(f"the plan has {n} steps (more than {rules.many_steps})")
    level = highest(levels)
    # The riskiest steps first, in plan order within a level.
    ranked = sorted(
        ((sid, r) for sid, r in steps.items() if r.level != "low"), key=lambda x: -rank(x[1].level)
    )
    for sid, r in ranked:  # what set each step's level first, then the rest of its evidence
        first = [f"step {sid}: {t}" for t in r.top]
        reasons.extend(first + [x for x in r.reasons if x not in first])
    if len(reasons) > MAX_PLAN_REASONS:
        more = len(reasons) - MAX_PLAN_REASONS
        reasons = [*reasons[:MAX_PLAN_REASONS], f"... and {more} more"]
    if not reasons:
        reasons.append(
            "every step is low-risk: no side effect, deletion, money or production target found"
        )
    return PlanRisk(level=level, reasons=reasons, steps=steps)
