"""The operator config: parsing, validation with key paths, versions, live reloading."""

from __future__ import annotations

import logging
import os
import signal
import time as _time
from collections.abc import Callable
from datetime import time, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from config import (
    ConfigError,
    ConfigHolder,
    OperatorConfig,
    QuietHours,
    check_config_file,
    config_path_from_env,
    default_config,
    format_duration,
    load_config,
    parse_duration,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "nps-dispatch.example.toml"


def write(tmp_path: Path, text: str, name: str = "nps-dispatch.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text, "bad.toml"))
    return info.value.problems


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = _time.monotonic() + timeout
    while _time.monotonic() < deadline:
        if condition():
            return True
        _time.sleep(0.01)
    return condition()


# -- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("6h", timedelta(hours=6)),
        ("3d", timedelta(days=3)),
        ("1w", timedelta(days=7)),
        ("1d12h", timedelta(hours=36)),
        ("0s", timedelta(0)),
        (" 2h ", timedelta(hours=2)),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "3", "-1d", "3x", "1.5h", "3D", "h", "1h1d", "3 d"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**7))
def test_format_duration_round_trips(seconds):
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


# -- defaults and the example file -------------------------------------------------------------


def test_missing_file_gives_defaults(tmp_path):
    config = load_config(tmp_path / "absent.toml")
    assert config == OperatorConfig() == load_config(None) == default_config()
    assert config.survey.shop_name == "Example Shop"
    assert config.survey.response_window == timedelta(days=14)
    assert config.survey.reminder.after == timedelta(days=3)
    assert config.survey.reminder.max == 1
    assert config.survey.bands.detractor == (0, 6)
    assert config.survey.followup.passive == "What would make it a 10?"
    s = config.schedule
    assert s.anchor == "delivered"
    assert s.anchor_timeout == timedelta(days=10)
    assert s.delay == timedelta(days=3)
    assert s.quiet_hours == QuietHours(start=time(20), end=time(9))
    assert s.send_days == ("mon", "tue", "wed", "thu", "fri", "sat")
    assert s.jitter == timedelta(hours=2)
    assert s.default_timezone == "Europe/Berlin"
    assert s.rules == () and s.arms == ()
    c = config.contact
    assert c.channels == ("email", "sms") and c.fallback is True
    assert c.frequency_cap == timedelta(days=90) and c.sample_rate == 1.0
    assert c.exclude.test_orders is True and c.exclude.min_total == Decimal("0")
    assert config.rate_limits.email == 50.0 and config.rate_limits.sms == 10.0
    assert len(config.version) == 12


def test_example_file_loads():
    config = load_config(EXAMPLE)
    assert len(config.schedule.rules) == 1
    rule = config.schedule.rules[0]
    assert rule.match.category == ("electronics",) and rule.delay == timedelta(days=7)
    # Everything else equals the built-in defaults.
    assert config.model_copy(update={"schedule": default_config().schedule}) == default_config()


def test_example_arms_load_when_uncommented(tmp_path):
    text = EXAMPLE.read_text(encoding="utf-8")
    lines = text.splitlines()
    start = lines.index("# [[schedule.arms]]")
    for i in range(start, len(lines)):
        if not lines[i].startswith("#"):
            break
        lines[i] = lines[i].removeprefix("# ").removeprefix("#")
    config = load_config(write(tmp_path, "\n".join(lines)))
    assert [(a.name, a.delay, a.weight) for a in config.schedule.arms] == [
        ("2d", timedelta(days=2), 1.0),
        ("7d", timedelta(days=7), 1.0),
    ]


def test_config_path_from_env():
    assert config_path_from_env({}) == Path("./nps-dispatch.toml")
    assert config_path_from_env({"NPS_CONFIG": "/etc/nps.toml"}) == Path("/etc/nps.toml")


def test_models_are_frozen():
    config = default_config()
    with pytest.raises(ValidationError):
        config.schedule.delay = timedelta(0)


# -- bad values name their key ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[[schedule.rules]]\nmatch = { category = "tv" }\ndelay = "3x"\n',
            "schedule.rules[0].delay: invalid duration '3x' (use 90s, 15m, 6h or 3d)",
        ),
        ('[schedule]\ndelay = ""\n', "schedule.delay: invalid duration ''"),
        ('[schedule]\ndelay = "-1d"\n', "schedule.delay: invalid duration '-1d'"),
        ("[schedule]\njitter = 3\n", "schedule.jitter: invalid duration 3"),
        ('[survey]\nresponse_window = "0s"\n', "survey.response_window: must be longer than 0s"),
        ('[schedule]\nanchor = "shipped"\n', "schedule.anchor: "),
        ('[schedule]\ndefault_timezone = "Mars/Olympus"\n', "schedule.default_timezone: unknown"),
        (
            '[schedule]\nquiet_hours = { start = "24:00", end = "09:00" }\n',
            "schedule.quiet_hours.start: invalid time '24:00'",
        ),
        ('[schedule]\nsend_days = ["mon", "funday"]\n', "schedule.send_days[1]: "),
        ('[schedule]\nsend_days = ["mon", "mon"]\n', "schedule.send_days: 'mon' is listed twice"),
        ("[schedule]\nsend_days = []\n", "schedule.send_days: must name at least one day"),
        (
            '[[schedule.rules]]\nmatch = { colour = "red" }\ndelay = "1d"\n',
            "schedule.rules[0].match.colour: unknown key (expected one of: category, channel, "
            "country, sales_channel)",
        ),
        (
            '[[schedule.rules]]\nmatch = {}\ndelay = "1d"\n',
            "schedule.rules[0].match: needs at least one of",
        ),
        ('[[schedule.rules]]\nmatch = { category = "tv" }\n', "schedule.rules[0].delay: required"),
        (
            '[[schedule.rules]]\nmatch = { channel = "fax" }\ndelay = "1d"\n',
            "schedule.rules[0].match.channel[0]: ",
        ),
        (
            '[[schedule.rules]]\nmatch = { country = "Germany" }\ndelay = "1d"\n',
            "schedule.rules[0].match.country: invalid country 'Germany'",
        ),
        (
            '[[schedule.arms]]\nname = "a"\ndelay = "1d"\nweight = 0\n',
            "schedule.arms[0].weight: ",
        ),
        (
            f'[[schedule.arms]]\nname = "{"x" * 65}"\ndelay = "1d"\n',
            "schedule.arms[0].name: String should have at most 64 characters",
        ),
        (
            '[[schedule.arms]]\nname = "a"\ndelay = "1d"\n[[schedule.arms]]\nname = "a"\n'
            'delay = "2d"\n',
            "schedule.arms[1].name: duplicate arm name 'a' (also arms[0])",
        ),
        ('[contact]\nchannels = ["email", "fax"]\n', "contact.channels[1]: "),
        ('[contact]\nchannels = ["sms", "sms"]\n', "contact.channels: 'sms' is listed twice"),
        ("[contact]\nchannels = []\n", "contact.channels: must name at least one channel"),
        ("[contact]\nsample_rate = 1.5\n", "contact.sample_rate: "),
        ("[contact]\nsample_rate = -0.1\n", "contact.sample_rate: "),
        (
            '[contact]\nexclude = { min_total = "ten" }\n',
            "contact.exclude.min_total: invalid amount 'ten'",
        ),
        ("[rate_limits]\nsms = 0\n", "rate_limits.sms: "),
        ("[rate_limits]\nfax = 1\n", "rate_limits.fax: unknown key"),
        ("[surveys]\nshop_name = 'x'\n", "surveys: unknown key"),
        (
            '[survey]\nresponse_window = "2d"\nreminder = { after = "3d", max = 1 }\n',
            "survey.reminder.after: must be shorter than survey.response_window (2d)",
        ),
        ('[survey]\nreminder = { after = "1d", max = -1 }\n', "survey.reminder.max: "),
        ('[survey]\nshop_name = ""\n', "survey.shop_name: "),
    ],
)
def test_bad_value_names_its_key(tmp_path, text, expected):
    problems = problems_of(tmp_path, text)
    assert any(p.startswith(expected) for p in problems), problems


def test_every_problem_is_listed_at_once(tmp_path):
    problems = problems_of(
        tmp_path,
        '[schedule]\ndelay = "3x"\njitter = "soon"\n[contact]\nsample_rate = 2\n',
    )
    assert [p.split(":")[0] for p in problems] == [
        "schedule.delay",
        "schedule.jitter",
        "contact.sample_rate",
    ]


def test_toml_syntax_error_has_line_and_column(tmp_path):
    problems = problems_of(tmp_path, '[survey]\nshop_name = "x"\ndelay = \n')
    assert len(problems) == 1
    assert problems[0].startswith("line 3, column ")
    assert "TOML syntax" in problems[0]


def test_error_message_lists_each_problem(tmp_path):
    path = write(tmp_path, '[schedule]\ndelay = "3x"\n[contact]\nsample_rate = 2\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n  schedule.delay: invalid duration '3x'" in message
    assert "\n  contact.sample_rate: " in message


@given(st.text(alphabet="0123456789smhdwx-. ", min_size=0, max_size=6))
def test_any_bad_duration_is_refused_with_its_path(text):
    try:
        parse_duration(text)
    except ValueError:
        valid = False
    else:
        valid = True
    try:
        OperatorConfig.model_validate({"schedule": {"jitter": text}})
    except ValidationError as exc:
        assert not valid
        assert exc.errors()[0]["loc"] == ("schedule", "jitter")
    else:
        assert valid


# -- bands ----------------------------------------------------------------------------------------


def bands_problems(tmp_path: Path, detractor, passive, promoter) -> tuple[str, ...]:
    text = (
        f"[survey]\nbands = {{ detractor = {detractor}, passive = {passive}, "
        f"promoter = {promoter} }}\n"
    )
    return problems_of(tmp_path, text)


def test_bands_that_overlap_are_refused(tmp_path):
    problems = bands_problems(tmp_path, [0, 6], [6, 8], [9, 10])
    assert problems == (
        "survey.bands.passive: overlaps detractor: detractor ends at 6, passive starts at 6",
    )


def test_bands_with_a_gap_are_refused(tmp_path):
    problems = bands_problems(tmp_path, [0, 5], [7, 8], [9, 10])
    assert problems == ("survey.bands.passive: leaves a gap after detractor: 6 in no band",)


@pytest.mark.parametrize(
    ("bands", "expected"),
    [
        (([1, 6], [7, 8], [9, 10]), "survey.bands.detractor: must start at 0"),
        (([0, 6], [7, 8], [9, 9]), "survey.bands.promoter: must end at 10"),
        (([0, 6], [8, 7], [9, 10]), "survey.bands.passive: starts at 8 after it ends at 7"),
        (([0, 6], [7, 8], [9, 11]), "survey.bands.promoter: [9, 11] is outside the scores 0..10"),
        (([0, 8], [7, 8], [9, 10]), "survey.bands.passive: overlaps detractor"),
        (([0, 6], [7, 8], [10, 10]), "survey.bands.promoter: leaves a gap after passive: 9"),
    ],
)
def test_bands_must_partition_0_to_10_in_order(tmp_path, bands, expected):
    problems = bands_problems(tmp_path, *bands)
    assert any(p.startswith(expected) for p in problems), problems


def test_marketing_bands_are_accepted_and_classify(tmp_path):
    config = load_config(
        write(
            tmp_path,
            "[survey]\nbands = { detractor = [0, 5], passive = [6, 8], promoter = [9, 10] }\n",
        )
    )
    bands = config.survey.bands
    assert [bands.band_of(s) for s in (0, 5, 6, 8, 9, 10)] == [
        "detractor",
        "detractor",
        "passive",
        "passive",
        "promoter",
        "promoter",
    ]
    with pytest.raises(ValueError):
        bands.band_of(11)


# -- other values -----------------------------------------------------------------------------


def test_values_are_normalised(tmp_path):
    config = load_config(
        write(
            tmp_path,
            "[schedule]\n"
            'send_days = ["Fri", "mon"]\n'
            'quiet_hours = { start = 22:00:00, end = "7:30" }\n'
            "[[schedule.rules]]\n"
            'match = { country = ["de", "AT"], channel = "sms" }\n'
            'delay = "36h"\n'
            "[contact]\n"
            'exclude = { min_total = "10.50" }\n',
        )
    )
    s = config.schedule
    assert s.send_days == ("mon", "fri")
    assert s.weekdays == frozenset({0, 4})
    assert s.quiet_hours == QuietHours(start=time(22), end=time(7, 30))
    assert s.rules[0].match.country == ("DE", "AT")
    assert s.rules[0].match.channel == ("sms",)
    assert s.rules[0].delay == timedelta(hours=36)
    assert config.contact.exclude.min_total == Decimal("10.50")


def test_quiet_hours_contains():
    night = QuietHours(start=time(20), end=time(9))
    assert night.wraps_midnight and night.enabled
    assert night.contains(time(22, 30)) and night.contains(time(3)) and night.contains(time(20))
    assert not night.contains(time(9)) and not night.contains(time(19, 59))
    lunch = QuietHours(start=time(12), end=time(14))
    assert lunch.contains(time(12)) and lunch.contains(time(13, 59))
    assert not lunch.contains(time(14)) and not lunch.contains(time(11, 59))
    none = QuietHours(start=time(0), end=time(0))
    assert not none.enabled and not none.contains(time(3))


# -- version --------------------------------------------------------------------------------------


BASE = """
[survey]
shop_name = "Shop"
response_window = "14d"

[schedule]
delay = "3d"
send_days = ["mon", "tue"]

[[schedule.rules]]
match = { category = "electronics" }
delay = "7d"
"""

SAME_MEANING = """# a comment; keys in another order, durations spelled another way
[schedule]
send_days = ["tue", "mon"]
delay = "72h"
quiet_hours = { start = "20:00", end = "09:00" }   # the default, spelled out

[[schedule.rules]]
delay = "1w"            # same as 7d
match = {category="electronics"}

[survey]
response_window = "336h"
shop_name = 'Shop'
"""


def test_version_stable_across_formatting_and_comments(tmp_path):
    a = load_config(write(tmp_path, BASE, "a.toml"))
    b = load_config(write(tmp_path, SAME_MEANING, "b.toml"))
    assert a == b
    assert a.version == b.version


def test_version_changes_when_a_value_changes(tmp_path):
    a = load_config(write(tmp_path, BASE, "a.toml"))
    b = load_config(write(tmp_path, BASE.replace('delay = "7d"', 'delay = "6d"'), "b.toml"))
    c = load_config(write(tmp_path, BASE.replace('"Shop"', '"Shop 2"'), "c.toml"))
    assert len({a.version, b.version, c.version}) == 3
    assert a.version != default_config().version


def test_schedule_version_follows_the_schedule_section_only(tmp_path):
    a = load_config(write(tmp_path, BASE, "a.toml"))
    same = load_config(write(tmp_path, SAME_MEANING, "same.toml"))
    delay = load_config(write(tmp_path, BASE.replace('delay = "7d"', 'delay = "6d"'), "d.toml"))
    name = load_config(write(tmp_path, BASE.replace('"Shop"', '"Shop 2"'), "n.toml"))
    assert a.schedule_version == same.schedule_version == name.schedule_version
    assert delay.schedule_version != a.schedule_version
    assert len(a.schedule_version) == 12


def test_version_follows_model_copy():
    config = default_config()
    changed = config.model_copy(
        update={"schedule": config.schedule.model_copy(update={"delay": timedelta(days=5)})}
    )
    assert changed.version != config.version
    assert changed.version == OperatorConfig.model_validate(changed.model_dump()).version
    assert changed.schedule_version != config.schedule_version
    assert (
        changed.schedule_version
        == OperatorConfig.model_validate(changed.model_dump()).schedule_version
    )


# -- check_config_file --------------------------------------------------------------------------


def test_check_good_file():
    ok, message = check_config_file(EXAMPLE)
    assert ok
    assert load_config(EXAMPLE).version in message
    assert "1 rule(s)" in message


def test_check_bad_file(tmp_path):
    ok, message = check_config_file(write(tmp_path, '[schedule]\ndelay = "3x"\n'))
    assert not ok
    assert "schedule.delay: invalid duration '3x'" in message


def test_check_missing_file(tmp_path):
    ok, message = check_config_file(tmp_path / "nope.toml")
    assert not ok
    assert "no config file" in message and default_config().version in message


# -- ConfigHolder -----------------------------------------------------------------------------


def test_holder_without_file_uses_defaults_then_loads_a_new_file(tmp_path):
    path = tmp_path / "nps-dispatch.toml"
    holder = ConfigHolder(path)
    assert holder.current() == default_config()
    assert holder.reload().changed is False
    path.write_text('[schedule]\ndelay = "5d"\n', encoding="utf-8")
    result = holder.reload()
    assert result.ok and result.changed
    assert holder.current().schedule.delay == timedelta(days=5)


def test_holder_refuses_a_bad_file_at_start(tmp_path):
    with pytest.raises(ConfigError):
        ConfigHolder(write(tmp_path, '[schedule]\ndelay = "3x"\n'))


def test_holder_reload_picks_up_an_edit(tmp_path):
    path = write(tmp_path, '[schedule]\ndelay = "3d"\n')
    seen = []
    holder = ConfigHolder(path, on_change=[lambda old, new: seen.append((old, new))])
    first = holder.current()
    assert holder.reload().changed is False
    path.write_text('[schedule]\ndelay = "4d"\n', encoding="utf-8")
    result = holder.reload()
    assert result.ok and result.changed
    assert result.previous_version == first.version
    assert result.version == holder.current().version != first.version
    assert holder.current().schedule.delay == timedelta(days=4)
    assert seen == [(first, holder.current())]


def test_holder_same_meaning_is_not_a_change(tmp_path):
    path = write(tmp_path, '[schedule]\ndelay = "3d"\n')
    seen = []
    holder = ConfigHolder(path, on_change=[lambda old, new: seen.append(new)])
    path.write_text('# edited\n[schedule]\ndelay = "72h"\n', encoding="utf-8")
    result = holder.reload()
    assert result.ok and not result.changed
    assert seen == []


def test_holder_keeps_last_good_config_on_a_bad_edit(tmp_path, caplog):
    path = write(tmp_path, '[schedule]\ndelay = "3d"\n')
    holder = ConfigHolder(path)
    good = holder.current()
    path.write_text('[schedule]\ndelay = "3d"\njitter = "3x"\n', encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger="config"):
        result = holder.reload()
    assert not result.ok and not result.changed
    assert result.version == good.version
    assert any(p.startswith("schedule.jitter: invalid duration '3x'") for p in result.problems)
    assert holder.current() is good
    assert "schedule.jitter" in caplog.text
    # The same bad file is not logged again on every poll, but still reported.
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="config"):
        again = holder.reload()
    assert not again.ok and again.problems == result.problems
    assert caplog.text == ""
    # Fixing the file brings the new config.
    path.write_text('[schedule]\ndelay = "2d"\n', encoding="utf-8")
    fixed = holder.reload()
    assert fixed.ok and fixed.changed
    assert holder.current().schedule.delay == timedelta(days=2)


def test_holder_keeps_config_when_file_disappears(tmp_path):
    path = write(tmp_path, '[schedule]\ndelay = "4d"\n')
    holder = ConfigHolder(path)
    path.unlink()
    result = holder.reload()
    assert not result.ok
    assert holder.current().schedule.delay == timedelta(days=4)


def test_holder_watcher_picks_up_a_change(tmp_path):
    path = write(tmp_path, '[schedule]\ndelay = "3d"\n')
    holder = ConfigHolder(path)
    holder.start_watching(interval_seconds=0.02)
    try:
        path.write_text('[schedule]\ndelay = "6d"\n', encoding="utf-8")
        assert wait_until(lambda: holder.current().schedule.delay == timedelta(days=6))
    finally:
        holder.stop()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_triggers_reload(tmp_path):
    path = write(tmp_path, '[schedule]\ndelay = "3d"\n')
    holder = ConfigHolder(path)
    previous = signal.getsignal(signal.SIGHUP)
    assert holder.install_sighup_handler()
    try:
        path.write_text('[schedule]\ndelay = "8d"\n', encoding="utf-8")
        os.kill(os.getpid(), signal.SIGHUP)
        assert wait_until(lambda: holder.current().schedule.delay == timedelta(days=8))
    finally:
        holder.stop()
    assert signal.getsignal(signal.SIGHUP) == previous


def test_sighup_handler_not_installed_off_the_main_thread(tmp_path):
    import threading

    holder = ConfigHolder(tmp_path / "absent.toml")
    results = []
    thread = threading.Thread(target=lambda: results.append(holder.install_sighup_handler()))
    thread.start()
    thread.join()
    assert results == [False]


def test_holder_listener_failure_does_not_break_reload(tmp_path):
    path = write(tmp_path, '[schedule]\ndelay = "3d"\n')

    def boom(old, new):
        raise RuntimeError("listener bug")

    holder = ConfigHolder(path, on_change=[boom])
    path.write_text('[schedule]\ndelay = "9d"\n', encoding="utf-8")
    assert holder.reload().changed
    assert holder.current().schedule.delay == timedelta(days=9)


# -- [shopify] and [woocommerce] ----------------------------------------------------------------


def test_platform_tables_default_to_paid_orders_vendor_and_subscribed():
    config = default_config()
    assert config.shopify.purchase_topics == ("orders/paid",)
    assert config.shopify.category == "vendor"
    assert config.shopify.consent_states == ("subscribed",)
    assert config.woocommerce.purchase_statuses == ("processing", "completed")
    assert config.woocommerce.email_consent_meta_key is None
    assert config.woocommerce.sms_consent_meta_key is None


def test_platform_tables_are_read(tmp_path):
    config = load_config(
        write(
            tmp_path,
            '[shopify]\npurchase_topics = ["orders/create", "orders/paid"]\n'
            'category = "product_type"\nconsent_states = ["subscribed", "pending"]\n'
            '[woocommerce]\npurchase_statuses = "completed"\n'
            'email_consent_meta_key = " _nps_email_consent "\n',
        )
    )
    assert config.shopify.purchase_topics == ("orders/create", "orders/paid")
    assert config.shopify.category == "product_type"
    assert config.shopify.consent_states == ("subscribed", "pending")
    assert config.woocommerce.purchase_statuses == ("completed",)
    assert config.woocommerce.email_consent_meta_key == "_nps_email_consent"
    assert config.version != default_config().version


def test_example_platform_keys_load_when_uncommented(tmp_path):
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    lines = [line.removeprefix("# ") if "_consent_meta_key =" in line else line for line in lines]
    config = load_config(write(tmp_path, "\n".join(lines)))
    assert config.woocommerce.email_consent_meta_key == "_nps_email_consent"
    assert config.woocommerce.sms_consent_meta_key == "_nps_sms_consent"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[shopify]\npurchase_topics = []\n", "shopify.purchase_topics: must not be empty"),
        ('[shopify]\npurchase_topics = ["orders/updated"]\n', "shopify.purchase_topics[0]: "),
        (
            '[shopify]\npurchase_topics = ["orders/paid", "orders/paid"]\n',
            "shopify.purchase_topics: 'orders/paid' is listed twice",
        ),
        ('[shopify]\ncategory = "collection"\n', "shopify.category: "),
        ('[shopify]\nconsent_states = ["opted_in"]\n', "shopify.consent_states[0]: "),
        (
            '[shopify]\nconsent_states = ["subscribed", "unsubscribed"]\n',
            "shopify.consent_states: 'unsubscribed' cannot count as consent",
        ),
        (
            '[shopify]\nconsent_states = ["not_subscribed"]\n',
            "shopify.consent_states: 'not_subscribed' cannot count as consent",
        ),
        ("[shopify]\nconsent_states = []\n", "shopify.consent_states: must not be empty"),
        ('[shopify]\nsecret = "x"\n', "shopify.secret: unknown key (expected one of: "),
        (
            '[woocommerce]\npurchase_statuses = ["cancelled"]\n',
            "woocommerce.purchase_statuses[0]: ",
        ),
        ("[woocommerce]\npurchase_statuses = []\n", "woocommerce.purchase_statuses: must not"),
        ('[woocommerce]\nsms_consent_meta_key = "  "\n', "woocommerce.sms_consent_meta_key: must"),
    ],
)
def test_bad_platform_value_names_its_key(tmp_path, text, expected):
    problems = problems_of(tmp_path, text)
    assert any(p.startswith(expected) for p in problems), problems
