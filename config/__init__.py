"""Configuration: the ground floor of the house. Imports nothing else of Plansmith.

Every variable an operator may set is declared once, in :mod:`config.settings`, in a
section per concern; :func:`load_settings` reads the environment (and ``.env``) and
fails with the variable's name when a value is wrong. The schemas of the structured
values (``PLANSMITH_MODELS``, ``PLANSMITH_POLICY``) live beside it.
"""

from config.http import HostDenied, UrlPolicy
from config.models import DEFAULT_MODELS, ModelConfig, parse_models
from config.policy import PolicyThresholds, RiskRules, TrustParams, parse_thresholds
from config.settings import (
    ApiSettings,
    ConfigError,
    HttpSettings,
    ModelSettings,
    PolicySettings,
    SandboxSettings,
    SecretsSettings,
    Settings,
    StoreSettings,
    TemporalSettings,
    WebhookSettings,
    env_names,
    get_settings,
    load_settings,
)

__all__ = [
    "DEFAULT_MODELS",
    "ApiSettings",
    "ConfigError",
    "HostDenied",
    "HttpSettings",
    "ModelConfig",
    "ModelSettings",
    "PolicySettings",
    "PolicyThresholds",
    "RiskRules",
    "SandboxSettings",
    "SecretsSettings",
    "Settings",
    "StoreSettings",
    "TemporalSettings",
    "TrustParams",
    "UrlPolicy",
    "WebhookSettings",
    "env_names",
    "get_settings",
    "load_settings",
    "parse_models",
    "parse_thresholds",
]
