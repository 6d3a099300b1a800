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


class RiskRules(BaseModel):
    """The knobs of the risk assessment (part of the policy thresholds)."""

    many_steps: int = Field(default=20, ge=1, description="more steps: the plan is medium")
    very_many_steps: int = Field(default=100, ge=1, description="more steps: the plan is high")


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
        return {**DEFAULT_MAX_UNATTENDED, **v}

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
