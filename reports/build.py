"""Assemble the report (the JSON of ``reports/REPORT_JSON.md``) from SQL aggregates.

:func:`build_report` runs the queries of :mod:`reports.query` and hands their results to pure
functions: the counts of :mod:`reports.tally` (states, dispositions, coverage, headline),
:func:`segment_entry`, :func:`timing_of` and the tested statistics of ``reports/stats/``
(``nps``, ``aapor``, ``adjustment``, ``timing``). Nothing here loops over rows: the loops run
over aggregated groups (states x bands x segments) or over segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any, Final

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from reports.covariates_query import (
    CATEGORICAL,
    COVARIATE_NAMES,
    CovariateTable,
    fetch_patterns,
)
from reports.params import ReportError, parse_by, parse_date
from reports.query import (
    NO_ARM,
    GridRow,
    Period,
    count_purchases,
    skip_reasons,
    survey_grid,
)
from reports.stats.adjustment import AdjustedNps, adjust_nps
from reports.stats.covariates import Categorical
from reports.stats.nps import NpsBands, NpsEstimate, compare_nps, json_float
from reports.stats.timing import GroupCounts, timing_report
from reports.tally import (
    INVITED,
    Tally,
    coverage_of,
    group_tallies,
    headline,
    tally,
)

POSTGRES_SETTINGS: list[str] = [
    # The report's GROUP BY has keys computed from timestamps and amounts (window open, days to
    # send, order value step), which PostgreSQL cannot estimate: it expects a group per survey,
    # and for the two grouping sets it would sort every row. The groups are the distinct
    # covariate patterns (tens of thousands for a million invitations, ~100 MB of hash tables),
    # so hashing both sets is right, in memory.
    "SET LOCAL enable_sort = off",
    "SET LOCAL work_mem = '512MB'",
    # Grouping sets are not split across workers by PostgreSQL 15; letting the join's rows
    # reach the aggregate through a Gather still runs the join in parallel.
    "SET LOCAL parallel_setup_cost = 0",
    "SET LOCAL parallel_tuple_cost = 0",
    # Compiling the expressions costs more than it saves on a query that runs once.
    "SET LOCAL jit = off",
]
"""Planner settings for the report's own transaction (PostgreSQL), see :func:`build_report`."""

REPORT_VERSION: Final = 1
"""Bumped on any incompatible change of the JSON shape (keys are only ever added otherwise)."""

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
    table: CovariateTable, rows: np.ndarray[Any, np.dtype[np.bool_]]
) -> tuple[dict[str, Any], list[str]]:
    """The model's covariates (see ``COVARIATE_NAMES``; the order value in steps of 0.1 on the
    log scale, whole days to send capped at 60, as :mod:`reports.covariates_query` builds them)
    of the table's ``rows``, and notes on imputation (invitees without an anchor or send time
    get the median over the invitees)."""
    notes: list[str] = []
    counts = table.count[rows]
    days = table.days_anchor_to_send[rows].copy()
    missing = np.isnan(days)
    if missing.any():
        fill = _median(days[~missing], counts[~missing]) if (~missing).any() else 0.0
        days[missing] = fill
        notes.append(
            f"days_anchor_to_send: {int(counts[missing].sum())} invitees without an anchor or "
            f"send time were given the median {fill:.2f}"
        )
    pattern = table.pattern[rows]
    coded: dict[str, Categorical] = {}
    for name in CATEGORICAL:
        levels, codes = np.unique(getattr(table, name), return_inverse=True)
        coded[name] = Categorical(name, tuple(str(v) for v in levels), codes[pattern])
    return (
        {
            "channel": coded["channel"],
            "category": coded["category"],
            "log_order_total": table.log_order_total[rows],
            "repeat_buyer": table.repeat_buyer[pattern],
            "country": coded["country"],
            "arm": coded["arm"],
            "days_anchor_to_send": days,
        },
        notes,
    )


def _median(values: np.ndarray[Any, Any], counts: np.ndarray[Any, Any]) -> float:
    """The median of ``values`` each repeated ``counts`` times (as numpy's median of them)."""
    order = np.argsort(values, kind="stable")
    ranked, cum = values[order], np.cumsum(counts[order])
    total = int(cum[-1])
    low = float(ranked[np.searchsorted(cum, (total - 1) // 2, side="right")])
    high = float(ranked[np.searchsorted(cum, total // 2, side="right")])
    return low if low == high else (low + high) / 2


def adjust(
    table: CovariateTable,
    bands: NpsBands,
    mask: np.ndarray[Any, np.dtype[np.bool_]] | None = None,
) -> AdjustedNps:
    """:func:`adjust_nps` over the table's rows (of ``mask``), responders without a banded score
    left out (they cannot be weighted; a note says how many)."""
    chosen = np.ones(table.rows, dtype=np.bool_) if mask is None else mask
    responded = table.responded[table.pattern]
    score = table.score[table.pattern]
    usable = ~responded | ~np.isnan(bands.values(score))
    dropped = int(table.count[chosen & ~usable].sum())
    rows = chosen & usable
    columns, notes = covariate_columns(table, rows)
    result = adjust_nps(
        columns, responded[rows], score[rows], bands=bands, counts=table.count[rows]
    )
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
    invited = [r for r in rows if r.state in INVITED]

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


def tune_session(session: Session) -> None:
    """Apply :data:`POSTGRES_SETTINGS` to the session's current transaction (PostgreSQL only;
    ``SET LOCAL``, so they end with it). :func:`build_report` does it for the sessions it
    opens; a caller running the report's assembly in its own transaction may call it first."""
    if session.get_bind().dialect.name == "postgresql":
        conn = session.connection()
        for setting in POSTGRES_SETTINGS:
            conn.exec_driver_sql(setting)


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
            tune_session(session)
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
    # One scan serves the overall figures, the timing view, the segments and the model.
    keys: tuple[str, ...] = ("arm", "delay")
    if by is not None and by not in keys:
        keys = (*keys, by)
    patterns = fetch_patterns(session, period, now, bands, keys, by)
    grid, table = patterns.grid, patterns.covariates
    overall = tally(grid)
    purchases = count_purchases(session, period)
    skipped = skip_reasons(session, period)

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
        for key, t in tallies.items():
            segments.append(segment_entry(key, t, adjust(table, bands, table.in_segment(key))))
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
