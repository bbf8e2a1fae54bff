"""Assemble the report (the JSON of ``reports/REPORT_JSON.md``) from SQL aggregates.

:func:`build_report` runs the queries of :mod:`reports.query` and hands their results to pure
functions: :func:`tally` (aggregated rows -> counts), :func:`dispositions_of`, :func:`coverage_of`,
:func:`segment_entry`, :func:`timing_of` and the tested statistics of ``reports/stats/``
(``nps``, ``aapor``, ``adjustment``, ``timing``). Nothing here loops over rows: the loops run
over aggregated groups (states x bands x segments) or over segments.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, Final

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from models.lifecycle import (
    ANSWERED_STATES,
    DISPOSITION_OF,
    INVITED_STATES,
    OPEN_STATES,
    SurveyState,
)
from reports.params import ReportError, parse_by, parse_date
from reports.query import (
    COVARIATE_NAMES,
    NO_ARM,
    CovariateTable,
    GridRow,
    Period,
    count_purchases,
    fetch_covariates,
    segment_sort_key,
    skip_reasons,
    survey_grid,
)
from reports.stats.aapor import Dispositions, aapor_rates, wilson_rate
from reports.stats.adjustment import AdjustedNps, adjust_nps
from reports.stats.nps import NpsBands, NpsEstimate, compare_nps, json_float, json_pair, nps_summary
from reports.stats.timing import GroupCounts, timing_report

REPORT_VERSION: Final = 1
"""Bumped on any incompatible change of the JSON shape (keys are only ever added otherwise)."""

DISPOSITION_KEYS: Final = ("I", "P", "R", "NC", "O", "UH", "UO", "NE")

_INVITED = frozenset(s.value for s in INVITED_STATES)
_ANSWERED = frozenset(s.value for s in ANSWERED_STATES)
_OPEN = frozenset(s.value for s in OPEN_STATES)
# Invited states that prove the invitation reached the person, whatever the receipts say.
# Every answered state is one (see ANSWERED_STATES), so a new one cannot be forgotten here.
_REACHED = _ANSWERED | {SurveyState.delivered.value, SurveyState.opted_out.value}
# Planned surveys not yet handed to a provider, in lifecycle order.
_BEFORE_SEND = ("waiting_anchor", "scheduled", "queued", "sending")


# --------------------------------------------------------------------------- parameters


def make_period(since: date | None, until: date | None, name: str = "period") -> Period:
    try:
        return Period(since, until)
    except ValueError as exc:
        raise ReportError(f"{name}: {exc}") from None


def previous_period(period: Period) -> Period | None:
    """The period of the same length just before ``period``; None when it is open-ended."""
    if period.since is None or period.until is None:
        return None
    length = period.until - period.since
    return Period(period.since - length, period.since)


def bands_of(config: OperatorConfig) -> NpsBands:
    b = config.survey.bands
    return NpsBands(
        detractor=(int(b.detractor[0]), int(b.detractor[1])),
        passive=(int(b.passive[0]), int(b.passive[1])),
        promoter=(int(b.promoter[0]), int(b.promoter[1])),
    )


# --------------------------------------------------------------------------- tallies (pure)


@dataclass(slots=True)
class Tally:
    """Counts of one group of surveys, from aggregated :class:`GridRow` s.

    ``by_state`` counts every survey by its stored state; ``open`` the invitations still inside
    their response window (``sent``/``delivered`` whose window has closed but which the
    scheduler has not moved yet count as ``no_response``); ``reached`` the invitations with a
    proof of delivery (receipt, answer or opt-out), by state.
    """

    by_state: Counter[str] = field(default_factory=Counter)
    open_by_state: Counter[str] = field(default_factory=Counter)
    reached_by_state: Counter[str] = field(default_factory=Counter)
    reached_open: int = 0
    promoters: int = 0
    passives: int = 0
    detractors: int = 0

    @property
    def surveys(self) -> int:
        return sum(self.by_state.values())

    @property
    def invited(self) -> int:
        return sum(n for s, n in self.by_state.items() if s in _INVITED)

    @property
    def open(self) -> int:
        return sum(self.open_by_state.values())

    @property
    def not_sent(self) -> int:
        return sum(n for s, n in self.by_state.items() if s in _BEFORE_SEND)

    @property
    def final_invited(self) -> int:
        """Invitations with a final outcome: the denominators of response rates."""
        return self.invited - self.open

    @property
    def answered(self) -> int:
        return sum(n for s, n in self.by_state.items() if s in _ANSWERED)

    @property
    def delivered(self) -> int:
        return sum(self.reached_by_state.values())

    def nps(self) -> NpsEstimate:
        return nps_summary(self.promoters, self.passives, self.detractors)


def tally(rows: Iterable[GridRow]) -> Tally:
    t = Tally()
    for row in rows:
        t.by_state[row.state] += row.n
        if row.is_open:
            t.open_by_state[row.state] += row.n
        if (
            row.state in _INVITED
            and row.state != SurveyState.undeliverable
            and (row.delivered or row.state in _REACHED)
        ):
            t.reached_by_state[row.state] += row.n
            if row.is_open:
                t.reached_open += row.n
        if row.band == "promoter":
            t.promoters += row.n
        elif row.band == "passive":
            t.passives += row.n
        elif row.band == "detractor":
            t.detractors += row.n
    return t


def group_tallies(rows: Iterable[GridRow], index: int) -> dict[str, Tally]:
    """One :class:`Tally` per value of ``row.keys[index]``."""
    grouped: dict[str, list[GridRow]] = {}
    for row in rows:
        grouped.setdefault(row.keys[index], []).append(row)
    return {key: tally(grouped[key]) for key in sorted(grouped, key=segment_sort_key)}


def dispositions_of(t: Tally) -> tuple[Dispositions, int]:
    """AAPOR dispositions of the surveys with a final outcome, and how many are still pending.

    Pending: planned but not sent yet, or invited and inside the response window. An open
    invitation past its window counts as non-contact (``no_response``), as the scheduler will
    record it.
    """
    codes: Counter[str] = Counter()
    pending = 0
    for state, n in t.by_state.items():
        still_open = t.open_by_state.get(state, 0)
        pending += still_open
        rest = n - still_open
        if state in _OPEN:
            codes["NC"] += rest
        elif state in _BEFORE_SEND:
            pending += rest
        else:
            codes[DISPOSITION_OF[SurveyState(state)].value] += rest
    return Dispositions(**{k: int(codes[k]) for k in DISPOSITION_KEYS}), pending


def _step(
    name: str, source: str, n: int, before: int, reasons: Mapping[str, int]
) -> dict[str, Any]:
    return {
        "step": name,
        "from": source,
        "n": n,
        "lost": before - n,
        "reasons": {k: v for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]) if v},
    }


def coverage_of(t: Tally, purchases: int, skipped: Mapping[str, int]) -> dict[str, Any]:
    """The funnel purchases -> eligible -> invited -> delivered -> answered with the reasons
    lost at each step (see REPORT_JSON.md)."""
    eligible = t.surveys
    not_planned = purchases - eligible - sum(skipped.values())
    eligible_lost = dict(skipped)
    if not_planned > 0:
        eligible_lost["not_planned"] = not_planned
    invited_lost = {s: n for s, n in t.by_state.items() if s not in _INVITED}
    undeliverable = t.by_state.get(SurveyState.undeliverable, 0)
    delivered_lost = {
        "undeliverable": undeliverable,
        "no_delivery_receipt": t.invited - t.delivered - undeliverable,
    }
    reached_open = t.reached_open
    opted_out = t.reached_by_state.get(SurveyState.opted_out, 0)
    answered_lost = {
        "opted_out": opted_out,
        "awaiting_answer": reached_open,
        "no_response": t.delivered - t.answered - opted_out - reached_open,
    }
    answered = t.answered
    return {
        "purchases": purchases,
        "eligible": eligible,
        "invited": t.invited,
        "delivered": t.delivered,
        "answered": answered,
        "steps": [
            _step("eligible", "purchases", eligible, purchases, eligible_lost),
            _step("invited", "eligible", t.invited, eligible, invited_lost),
            _step("delivered", "invited", t.delivered, t.invited, delivered_lost),
            _step("answered", "delivered", answered, t.delivered, answered_lost),
        ],
    }


def _counts(estimate: NpsEstimate) -> dict[str, int]:
    return {
        "promoters": estimate.promoters,
        "passives": estimate.passives,
        "detractors": estimate.detractors,
        "n": estimate.n,
    }


def headline(t: Tally) -> dict[str, Any]:
    """The keys shared by the overall report, each segment and a compared period."""
    estimate = t.nps()
    disp, pending = dispositions_of(t)
    rate = wilson_rate(estimate.n, t.final_invited)
    return {
        "n_surveys": t.surveys,
        "n_invited": t.invited,
        "n_pending": pending,
        "n_answered": t.answered,
        "nps": json_float(estimate.nps),
        "nps_ci95": json_pair(estimate.ci95),
        "nps_se": json_float(estimate.se_adjusted),
        "counts": _counts(estimate),
        "response_rate": rate.to_dict(),
        "dispositions": {**{k: getattr(disp, k) for k in DISPOSITION_KEYS}, "pending": pending},
        "rates": aapor_rates(disp).to_dict(),
    }


def adjusted_entry(adjusted: AdjustedNps, raw: NpsEstimate) -> dict[str, Any]:
    """:meth:`AdjustedNps.to_dict` plus the covariates used and how far it moved from raw.

    ``differs_from_raw``: the adjusted NPS lies outside the raw 95% interval or the raw NPS
    outside the adjusted one; ``note`` says so in words.
    """
    out = adjusted.to_dict()
    out["covariates"] = list(COVARIATE_NAMES)
    shift = None
    differs = False
    if adjusted.nps is not None and raw.nps is not None:
        shift = adjusted.nps - raw.nps
        raw_ci, adj_ci = raw.ci95, adjusted.ci95
        differs = bool(
            (raw_ci is not None and not raw_ci[0] <= adjusted.nps <= raw_ci[1])
            or (adj_ci is not None and not adj_ci[0] <= raw.nps <= adj_ci[1])
        )
    out["shift"] = json_float(shift)
    out["differs_from_raw"] = differs
    out["note"] = adjusted_note(raw.nps, adjusted.nps, differs, adjusted.smd)
    return out


def adjusted_note(
    raw: float | None, adjusted: float | None, differs: bool, smd: Sequence[Any]
) -> str | None:
    if raw is None or adjusted is None:
        return None
    if not differs:
        return (
            f"Re-weighting for who answered moves NPS from {raw:.1f} to {adjusted:.1f}, within "
            "the sampling error: no sign that non-response biases the score."
        )
    flagged = [b.covariate for b in smd if b.flagged]
    direction = "overstates" if raw > adjusted else "understates"
    why = f" Responders differ most on {', '.join(flagged[:3])}." if flagged else ""
    return (
        f"The raw NPS ({raw:.1f}) likely {direction} the NPS of everyone invited: re-weighted "
        f"for who answered it is {adjusted:.1f}, outside the raw 95% interval.{why}"
    )


def covariate_columns(
    table: CovariateTable, mask: np.ndarray[Any, np.dtype[np.bool_]] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The model's covariates (see ``COVARIATE_NAMES``), and notes on imputation."""
    sel: Any = slice(None) if mask is None else mask
    notes: list[str] = []
    days = table.days_anchor_to_send[sel].copy()
    missing = np.isnan(days)
    if missing.any():
        fill = float(np.median(days[~missing])) if (~missing).any() else 0.0
        days[missing] = fill
        notes.append(
            f"days_anchor_to_send: {int(missing.sum())} invitees without an anchor or send "
            f"time were given the median {fill:.2f}"
        )
    total = np.maximum(table.order_total[sel], 0.0)
    return (
        {
            "channel": table.channel[sel],
            "category": table.category[sel],
            "log_order_total": np.log1p(total),
            "repeat_buyer": table.repeat_buyer[sel],
            "country": table.country[sel],
            "arm": table.arm[sel],
            "days_anchor_to_send": days,
        },
        notes,
    )


def adjust(
    table: CovariateTable,
    bands: NpsBands,
    mask: np.ndarray[Any, np.dtype[np.bool_]] | None = None,
) -> AdjustedNps:
    """:func:`adjust_nps` over the invitees (of ``mask``), responders without a banded score
    left out (they cannot be weighted; a note says how many)."""
    responded = table.responded if mask is None else table.responded[mask]
    score = table.score if mask is None else table.score[mask]
    usable = ~responded | ~np.isnan(bands.values(score))
    if mask is None:
        mask = usable
        dropped = int((~usable).sum())
    else:
        dropped = int((~usable).sum())
        mask = mask.copy()
        mask[mask] = usable
    columns, notes = covariate_columns(table, mask)
    result = adjust_nps(columns, table.responded[mask], table.score[mask], bands=bands)
    if dropped:
        notes.append(f"{dropped} answered invitations without a score in a band were left out")
    if notes:
        return _with_notes(result, notes)
    return result


def _with_notes(result: AdjustedNps, notes: list[str]) -> AdjustedNps:
    return replace(result, warnings=(*result.warnings, *notes))


def timing_of(rows: Sequence[GridRow], arm_order: Sequence[str]) -> dict[str, Any]:
    """NPS and response rate per delay arm and per whole day from anchor to send, each against
    the first group (the first configured arm; the shortest delay). Invitations only; open ones
    are left out of the response rates."""
    invited = [r for r in rows if r.state in _INVITED]

    def groups(index: int, order: Sequence[str] | None) -> dict[str, GroupCounts]:
        tallies = group_tallies(invited, index)
        labels = list(tallies)
        if order:
            rank = {name: i for i, name in enumerate(order)}
            labels.sort(key=lambda k: (rank.get(k, len(rank)), k == NO_ARM, k))
        return {
            k: GroupCounts(
                tallies[k].promoters,
                tallies[k].passives,
                tallies[k].detractors,
                tallies[k].final_invited,
            )
            for k in labels
            if tallies[k].final_invited > 0
        }

    by_arm = groups(0, arm_order)
    by_delay = groups(1, None)
    return {
        "reference_arm": next(iter(by_arm), None),
        "by_arm": [g.to_dict() for g in timing_report(by_arm)],
        "reference_delay": next(iter(by_delay), None),
        "by_delay": [g.to_dict() for g in timing_report(by_delay)],
    }


def segment_entry(key: str, t: Tally, adjusted: AdjustedNps | None) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, **headline(t)}
    estimate = t.nps()
    out["adjusted"] = None if adjusted is None else adjusted_entry(adjusted, estimate)
    out["bounds"] = (
        None if adjusted is None or adjusted.bounds is None else adjusted.bounds.to_dict()
    )
    return out


# --------------------------------------------------------------------------- the report


SessionSource = Session | sessionmaker[Session]


def build_report(
    session_or_factory: SessionSource,
    config: OperatorConfig,
    since: date | str | None = None,
    until: date | str | None = None,
    by: str | None = None,
    *,
    compare: bool = True,
    compare_since: date | str | None = None,
    compare_until: date | str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (shape: ``reports/REPORT_JSON.md``).

    ``compare``: with ``compare_since``/``compare_until`` the report compares against that
    period; otherwise, when both ``since`` and ``until`` are given, against the period of the
    same length just before; otherwise (or with ``compare=False``) ``compare`` is None.
    Raises :class:`ReportError` on bad parameters.
    """
    period = make_period(parse_date(since, "since"), parse_date(until, "until"))
    by = parse_by(by)
    other: Period | None = None
    if compare:
        c_since = parse_date(compare_since, "compare_since")
        c_until = parse_date(compare_until, "compare_until")
        if c_since is not None or c_until is not None:
            other = make_period(c_since, c_until, "compare period")
        else:
            other = previous_period(period)
    now = now or datetime.now(UTC)
    if isinstance(session_or_factory, Session):
        return _build(session_or_factory, config, period, by, other, now)
    with session_or_factory() as session:
        if session.get_bind().dialect.name == "postgresql":
            # One snapshot for every query, so that the funnel adds up under concurrent writes.
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        try:
            return _build(session, config, period, by, other, now)
        finally:
            session.rollback()


def _build(
    session: Session,
    config: OperatorConfig,
    period: Period,
    by: str | None,
    other: Period | None,
    now: datetime,
) -> dict[str, Any]:
    bands = bands_of(config)
    # One GROUP BY serves the overall figures, the timing view and the segments.
    keys: tuple[str, ...] = ("arm", "delay")
    if by is not None and by not in keys:
        keys = (*keys, by)
    grid = survey_grid(session, period, keys, bands, now)
    overall = tally(grid)
    purchases = count_purchases(session, period)
    skipped = skip_reasons(session, period)
    table = fetch_covariates(session, period, now, by)

    estimate = overall.nps()
    adjusted = adjust(table, bands)
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "as_of": now.astimezone(UTC).isoformat(timespec="seconds"),
        "period": period.to_dict(),
        "by": by,
        "bands": {
            "detractor": list(bands.detractor),
            "passive": list(bands.passive),
            "promoter": list(bands.promoter),
        },
        "n_purchases": purchases,
        **headline(overall),
    }
    report["adjusted"] = adjusted_entry(adjusted, estimate)
    report["bounds"] = None if adjusted.bounds is None else adjusted.bounds.to_dict()
    report["coverage"] = coverage_of(overall, purchases, skipped)

    segments: list[dict[str, Any]] = []
    if by is not None:
        tallies = group_tallies(grid, keys.index(by))
        if table.segment is None:
            raise RuntimeError(f"the covariates were fetched without the segment {by!r}")
        for key, t in tallies.items():
            mask = table.segment == key
            segments.append(segment_entry(key, t, adjust(table, bands, mask)))
    report["segments"] = segments
    report["timing"] = timing_of(grid, [arm.name for arm in config.schedule.arms])

    report["compare"] = None
    if other is not None:
        previous = tally(survey_grid(session, other, (), bands, now))
        prev_estimate = previous.nps()
        report["compare"] = {
            "period": other.to_dict(),
            **headline(previous),
            "difference": compare_nps(prev_estimate, estimate).to_dict(),
        }
    return report
