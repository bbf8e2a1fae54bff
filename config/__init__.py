"""Operator config (the TOML file) and environment settings. Imports none of our packages.

The operator config is split by role: ``values`` (durations, times, amounts, shared literals and
the base model), one module per group of sections (``survey``, ``schedule``, ``contact``,
``platforms``, ``alerts``), ``operator`` (the whole file), ``loading`` (reading it, with precise
errors) and ``live`` (the reloading holder of a running process). Every public name is
importable from here.
"""

from config.alerts import AlertsConfig, AlertTarget
from config.contact import ContactConfig, Exclude, RateLimits
from config.live import ChangeCallback, ConfigHolder, ReloadResult
from config.loading import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    check_config_file,
    config_path_from_env,
    load_config,
)
from config.operator import OperatorConfig, default_config
from config.platforms import (
    ShopifyConfig,
    ShopifyConsentState,
    ShopifyPurchaseTopic,
    WooCommerceConfig,
    WooCommerceStatus,
)
from config.schedule import Arm, QuietHours, Rule, RuleMatch, ScheduleConfig
from config.survey import BandName, Bands, Followup, Reminder, SurveyConfig
from config.values import (
    WEEKDAYS,
    Amount,
    AnchorKind,
    ChannelName,
    Clock,
    Duration,
    PositiveDuration,
    Weekday,
    format_duration,
    parse_duration,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "WEEKDAYS",
    "AlertTarget",
    "AlertsConfig",
    "Amount",
    "AnchorKind",
    "Arm",
    "BandName",
    "Bands",
    "ChangeCallback",
    "ChannelName",
    "Clock",
    "ConfigError",
    "ConfigHolder",
    "ContactConfig",
    "Duration",
    "Exclude",
    "Followup",
    "OperatorConfig",
    "PositiveDuration",
    "QuietHours",
    "RateLimits",
    "ReloadResult",
    "Reminder",
    "Rule",
    "RuleMatch",
    "ScheduleConfig",
    "ShopifyConfig",
    "ShopifyConsentState",
    "ShopifyPurchaseTopic",
    "SurveyConfig",
    "Weekday",
    "WooCommerceConfig",
    "WooCommerceStatus",
    "check_config_file",
    "config_path_from_env",
    "default_config",
    "format_duration",
    "load_config",
    "parse_duration",
]
