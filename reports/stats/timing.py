"""NPS and response rate per group (delay arm, days since anchor), each against a reference.

Per group: the NPS with its adjusted-Wald interval (:func:`reports.stats.nps.nps_summary`), the
response rate answers / invited with its Wilson interval (:func:`reports.stats.aapor.wilson_rate`),
and :func:`reports.stats.nps.compare_nps` of the group against the reference group (the first one
unless named), i.e. NPS(group) - NPS(reference).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reports.stats.aapor import RateInterval, wilson_rate
from reports.stats.nps import NpsComparison, NpsEstimate, compare_nps, nps_summary


@dataclass(frozen=True, slots=True)
class GroupCounts:
    """Answers by category, and invitations, of one group."""

    promoters: int
    passives: int
    detractors: int
    invited: int

    def __post_init__(self) -> None:
        answered = self.promoters + self.passives + self.detractors
        if min(self.promoters, self.passives, self.detractors) < 0 or self.invited < answered:
            raise ValueError(f"need non-negative counts and invited >= answers, got {self}")


@dataclass(frozen=True, slots=True)
class GroupReport:
    """One group's NPS, response rate and comparison with the reference (None for itself)."""

    label: str
    nps: NpsEstimate
    response_rate: RateInterval
    vs_reference: NpsComparison | None

    def to_dict(self) -> dict[str, object]:
        """Keys: label, nps, response_rate, vs_reference."""
        return {
            "label": self.label,
            "nps": self.nps.to_dict(),
            "response_rate": self.response_rate.to_dict(),
            "vs_reference": None if self.vs_reference is None else self.vs_reference.to_dict(),
        }


def timing_report(
    groups: Mapping[str, GroupCounts], reference: str | None = None
) -> tuple[GroupReport, ...]:
    """One :class:`GroupReport` per group, in the mapping's order."""
    if not groups:
        return ()
    ref_label = next(iter(groups)) if reference is None else reference
    if ref_label not in groups:
        raise KeyError(f"reference group {ref_label!r} is not among the groups")
    estimates = {
        label: nps_summary(c.promoters, c.passives, c.detractors) for label, c in groups.items()
    }
    ref = estimates[ref_label]
    return tuple(
        GroupReport(
            label=label,
            nps=estimates[label],
            response_rate=wilson_rate(estimates[label].n, c.invited),
            vs_reference=None if label == ref_label else compare_nps(ref, estimates[label]),
        )
        for label, c in groups.items()
    )
