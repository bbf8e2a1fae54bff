"""The operator config of `nps-dispatch demo`: the shipped defaults with delays, windows and
quiet hours scaled to seconds, so that a week of surveys plays out in half a minute."""

DEMO_CONFIG = """
[survey]
shop_name = "Demo Shop"
response_window = "60s"
reminder = { after = "30s", max = 1 }

[schedule]
anchor = "delivered"
anchor_timeout = "5s"
delay = "4s"
quiet_hours = { start = "00:00", end = "00:00" }   # none: the demo runs at any hour
send_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
jitter = "2s"
default_timezone = "Europe/Berlin"

[[schedule.rules]]
match = { category = "electronics" }
delay = "7s"

[[schedule.arms]]
name = "2s"
delay = "2s"
weight = 1

[[schedule.arms]]
name = "6s"
delay = "6s"
weight = 1

[contact]
channels = ["sms", "email"]
fallback = true
frequency_cap = "90d"
sample_rate = 0.95
exclude = { test_orders = true, min_total = "5" }
"""
