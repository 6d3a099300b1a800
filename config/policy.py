"""What the adaptive approval policy allows (``PLANSMITH_POLICY``,
``PLANSMITH_TRUST_HALF_LIFE_DAYS``): the thresholds an operator tunes. The policy itself
is pure domain code (:mod:`plans.policy`); these are its knobs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

RiskLevel = Literal["low", "medium", "high", "critical"]
LEVELS: tuple[RiskLevel, ...] = ("low", "medium", "high", "critical")

TrustLevel = Literal["untrusted", "low", "moderate", "high"]
TRUST_LEVELS: tuple[TrustLevel, ...] = ("untrusted", "low", "moderate", "high")
DEFAULT_TRUST_LEVELS: dict[TrustLevel, float] = {
    "untrusted": 0.0,
    "low": 0.2,
    "moderate": 0.5,
    "high": 0.75,
}
DEFAULT_MAX_UNATTENDED: dict[TrustLevel, RiskLevel | None] = {
    "untrusted": None,
    "low": "medium",
    "moderate": "medium",
    "high": "high",
}
# Trust levels that never run high-risk plans without a person, whatever PLANSMITH_POLICY
# says (a new agent is at most "low" until it has min_runs runs on record).
LOW_TRUST: tuple[TrustLevel, ...] = ("untrusted", "low")
LOW_TRUST_CEILING: RiskLevel = "medium"


class RiskRules(BaseModel):
    """The knobs of the risk assessment (part of the policy thresholds, ``"risk"`` in
    ``PLANSMITH_POLICY``). Words match as whole words of a host, path, query or text
    (``-``, ``_``, ``.``, ``/``, ``=`` separate words; a plural ``s`` matches too; a space
    in a word matches a space, ``-`` or ``_`` or nothing)."""

    many_steps: int = Field(default=20, ge=1, description="more steps: the plan is medium")
    very_many_steps: int = Field(default=100, ge=1, description="more steps: the plan is high")
    production_words: list[str] = Field(
        default_factory=lambda: ["prod", "production", "prd"],
        description="words that name a production target (in a host, path, query, env=...)",
    )
    deploy_words: list[str] = Field(
        default_factory=lambda: ["deploy", "deployment", "rollout", "go live"],
        description="words that make a write (POST/PUT/PATCH/DELETE) a production change",
    )
    deletion_words: list[str] = Field(
        default_factory=lambda: ["delete", "destroy", "wipe", "purge", "erase"],
        description="words of a deletion (SQL DROP/TRUNCATE/DELETE FROM, rm -rf and an HTTP "
        "DELETE are always deletions)",
    )
    money_words: list[str] = Field(
        default_factory=lambda: [
            "payment",
            "payout",
            "refund",
            "charge",
            "invoice",
            "billing",
            "checkout",
            "withdraw",
            "withdrawal",
            "wire transfer",
            "bank transfer",
            "money transfer",
            "fund transfer",
            "funds transfer",
        ],
        description="words of payments or money (amounts with a currency always count)",
    )
    money_write_words: list[str] = Field(
        default_factory=lambda: ["transfer", "pay", "wire", "remit", "remittance", "disburse"],
        description="words that move money in a write's URL or a tool's name (not in other text)",
    )
    payment_hosts: list[str] = Field(
        default_factory=lambda: [
            "stripe.com",
            "paypal.com",
            "adyen.com",
            "braintreegateway.com",
            "squareup.com",
        ],
        description="hosts of payment providers (a request to them is about money)",
    )
    tool_names: bool = Field(
        default=True, description="read a tool's name for money, deletion and deploy words"
    )
    production_level: RiskLevel = Field(
        default="medium", description="a production target named (read, or in text)"
    )
    production_write_level: RiskLevel = Field(
        default="high",
        description="a write to a production or deploy target, on any host (this machine too)",
    )
    deletion_level: RiskLevel = Field(default="high", description="a deletion anywhere")
    money_level: RiskLevel = Field(default="high", description="payments or money moved")
    external_write_level: RiskLevel = Field(
        default="high", description="a write to a host that is not this machine (or not known)"
    )


# The rules before writes to production, deploy words and tool names were signals: what
# the workflow's legacy fallback decides with on replay of runs recorded then.
LEGACY_RISK_RULES = RiskRules(
    deploy_words=[],
    money_write_words=[],
    tool_names=False,
    production_write_level="medium",
)


class TrustParams(BaseModel):
    half_life_days: float = Field(
        default=30.0,
        gt=0,
        description="a run this old counts half (PLANSMITH_TRUST_HALF_LIFE_DAYS)",
    )
    prior: float = Field(default=0.3, ge=0, le=1, description="the score of a fresh agent")
    prior_weight: float = Field(default=2.5, gt=0, description="how many runs the prior is worth")
    unattended_success_weight: float = Field(
        default=0.5, ge=0, le=1, description="weight of what went well in a run no person approved"
    )
    self_approved_success_weight: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="weight of what went well in a run approved by its own agent or submitter "
        "(a self-approval is no person vouching: it earns no trust)",
    )
    partial_value: float = Field(default=0.5, ge=0, le=1)
    correction_penalty: float = Field(default=0.2, ge=0, le=1)
    step_rejection_penalty: float = Field(default=0.25, ge=0, le=1)
    max_runs: int = Field(default=200, ge=1, description="the newest runs read from the store")


class PolicyThresholds(BaseModel):
    """What the adaptive policy allows; every field can be set in ``PLANSMITH_POLICY``."""

    trust_levels: dict[TrustLevel, float] = Field(
        default_factory=lambda: dict(DEFAULT_TRUST_LEVELS),
        description="lowest score of each trust level",
    )
    max_unattended_risk: dict[TrustLevel, RiskLevel | None] = Field(
        default_factory=lambda: dict(DEFAULT_MAX_UNATTENDED),
        description="the riskiest plan an agent of each trust level runs without a person "
        "(null: every plan needs a person)",
    )
    min_runs: int = Field(
        default=3, ge=0, description="with fewer finished runs, trust stays at most 'low'"
    )
    gate_level: RiskLevel = Field(
        default="critical",
        description="steps at this risk or above always wait for a person before they run",
    )
    trust: TrustParams = Field(default_factory=TrustParams)
    risk: RiskRules = Field(default_factory=RiskRules)

    @field_validator("trust_levels")
    @classmethod
    def _all_levels(cls, v: dict[TrustLevel, float]) -> dict[TrustLevel, float]:
        merged = {**DEFAULT_TRUST_LEVELS, **v}
        bounds = [merged[k] for k in TRUST_LEVELS]
        if bounds != sorted(bounds):
            raise ValueError(f"trust_levels must grow from untrusted to high, got {merged}")
        return merged

    @field_validator("max_unattended_risk")
    @classmethod
    def _all_risks(
        cls, v: dict[TrustLevel, RiskLevel | None]
    ) -> dict[TrustLevel, RiskLevel | None]:
        merged = {**DEFAULT_MAX_UNATTENDED, **v}
        for level in LOW_TRUST:
            allowed = merged[level]
            if allowed is not None and LEVELS.index(allowed) > LEVELS.index(LOW_TRUST_CEILING):
                raise ValueError(
                    f"max_unattended_risk.{level} is {allowed!r}: an agent of {level} trust "
                    f"may run at most {LOW_TRUST_CEILING}-risk plans without a person "
                    "(writes to production, deletions and payments are high)"
                )
        return merged

    def level_of(self, score: float) -> TrustLevel:
        level: TrustLevel = "untrusted"
        for name in TRUST_LEVELS:
            if score >= self.trust_levels[name]:
                level = name
        return level


def parse_thresholds(text: str | None, half_life_days: float | None = None) -> PolicyThresholds:
    """``PLANSMITH_POLICY`` (JSON, any subset of :class:`PolicyThresholds`) and
    ``PLANSMITH_TRUST_HALF_LIFE_DAYS`` as thresholds; a bad value raises ValueError naming it."""
    data: Mapping[str, Any] = {}
    if text and text.strip():
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"PLANSMITH_POLICY is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError("PLANSMITH_POLICY must be a JSON object")
    try:
        th = PolicyThresholds.model_validate(data)
    except ValueError as e:
        raise ValueError(f"PLANSMITH_POLICY is invalid: {e}") from None
    if half_life_days is not None:
        th.trust.half_life_days = half_life_days
    return th
