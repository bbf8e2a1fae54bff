"""The report's counts, from the aggregated rows of :mod:`reports.query` (pure functions): the
tally of states and bands, the AAPOR dispositions, the coverage funnel and the headline NPS."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from models.lifecycle import (
    ANSWERED_STATES,
    DISPOSITION_OF,
    INVITED_STATES,
    OPEN_STATES,
    SurveyState,
)
from reports.query import (
    GridRow,
    segment_sort_key,
)
from reports.stats.aapor import Dispositions, aapor_rates, wilson_rate
from reports.stats.nps import NpsEstimate, json_float, json_pair, nps_summary

DISPOSITION_KEYS: Final = ("I", "P", "R", "NC", "O", "UH", "UO", "NE")

INVITED = frozenset(s.value for s in INVITED_STATES)
_ANSWERED = frozenset(s.value for s in ANSWERED_STATES)
_OPEN = frozenset(s.value for s in OPEN_STATES)
# Invited states that prove the invitation reached the person, whatever the receipts say.
# Every answered state is one (see ANSWERED_STATES), so a new one cannot be forgotten here.
_REACHED = _ANSWERED | {SurveyState.delivered.value, SurveyState.opted_out.value}
# Planned surveys not yet handed to a provider, in lifecycle order.
_BEFORE_SEND = ("waiting_anchor", "scheduled", "queued", "sending")


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
        return sum(n for s, n in self.by_state.items() if s in INVITED)

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
            row.state in INVITED
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
    invited_lost = {s: n for s, n in t.by_state.items() if s not in INVITED}
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
