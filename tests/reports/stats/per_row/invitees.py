"""The adjustment's covariates built one invitee at a time, straight from a test population
(:class:`tests.reports.test_report_db.Case`), and the report's ``adjusted`` entries computed
from them by the per-row reference (:mod:`tests.reports.stats.per_row.adjustment`).

This is the model's specification written out per invitee, independently of the SQL that
groups invitees into patterns:

- ``channel``; ``category``, ``country`` (``unknown`` when missing); ``arm`` (``none``);
- ``log_order_total``: ``round(ln(1 + max(total, 0)) / 0.1) * 0.1``, steps of 0.1 on the log
  scale (a missing total counts as 0);
- ``repeat_buyer``: previous orders > 0;
- ``days_anchor_to_send``: ``floor((sent_at - anchor_at) / 1 day)`` capped at 60; invitees
  without an anchor or send time get the median of the others.

Responders without a score in a band are left out with a note, as in the report.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import Any

import numpy as np

from reports.build import adjusted_entry
from reports.stats.nps import NpsBands
from tests.reports.stats.per_row.adjustment import adjust_nps
from tests.reports.test_report_db import ANSWERED, INVITED

MAX_DAYS = 60
STEPS_PER_UNIT = 10


def log_order_total(total: float | None) -> float:
    return round(math.log1p(max(total or 0.0, 0.0)) * STEPS_PER_UNIT) / STEPS_PER_UNIT


def days_anchor_to_send(case: Any) -> float:
    if case.sent_at is None or case.anchor_at is None:
        return math.nan
    days = math.floor((case.sent_at - case.anchor_at).total_seconds() / 86400)
    return float(min(days, MAX_DAYS))


def covariates(final: list[Any]) -> tuple[dict[str, Any], list[str]]:
    """One value per invitee of ``final`` for each covariate, and the imputation notes."""
    notes: list[str] = []
    days = np.array([days_anchor_to_send(c) for c in final], dtype=np.float64)
    missing = np.isnan(days)
    if missing.any():
        fill = float(np.median(days[~missing])) if (~missing).any() else 0.0
        days[missing] = fill
        notes.append(
            f"days_anchor_to_send: {int(missing.sum())} invitees without an anchor or "
            f"send time were given the median {fill:.2f}"
        )
    return (
        {
            "channel": np.array([c.channel for c in final], dtype=np.str_),
            "category": np.array([c.category or "unknown" for c in final], dtype=np.str_),
            "log_order_total": np.array([log_order_total(c.total) for c in final]),
            "repeat_buyer": np.array([float((c.previous_orders or 0) > 0) for c in final]),
            "country": np.array(
                ["unknown" if c.country is None else c.country for c in final], dtype=np.str_
            ),
            "arm": np.array([c.arm or "none" for c in final], dtype=np.str_),
            "days_anchor_to_send": days,
        },
        notes,
    )


def final_invitations(cases: list[Any]) -> list[Any]:
    """Invited, with the response window closed (the model's population)."""
    return [c for c in cases if c.state in INVITED and not c.is_open]


def adjusted(cases: list[Any], bands: NpsBands, raw: dict[str, Any]) -> dict[str, Any]:
    """The report's ``adjusted`` entry over the final invitations of ``cases``; ``raw`` is the
    report entry whose ``nps`` and ``nps_ci95`` the adjusted NPS is compared with."""
    final = final_invitations(cases)
    usable = [
        c
        for c in final
        if c.state not in ANSWERED
        or (c.score is not None and not math.isnan(bands.values(np.array([c.score]))[0]))
    ]
    columns, notes = covariates(usable)
    responded = np.array([c.state in ANSWERED for c in usable], dtype=np.bool_)
    scores = np.array(
        [c.score if c.state in ANSWERED else np.nan for c in usable], dtype=np.float64
    )
    result = adjust_nps(columns, responded, scores, bands=bands)
    if len(final) > len(usable):
        notes.append(
            f"{len(final) - len(usable)} answered invitations without a score in a band were "
            "left out"
        )
    result = dataclasses.replace(result, warnings=(*result.warnings, *notes))
    estimate = SimpleNamespace(
        nps=raw["nps"], ci95=None if raw["nps_ci95"] is None else tuple(raw["nps_ci95"])
    )
    return adjusted_entry(result, estimate)
