"""AAPOR outcome rates (response, cooperation, refusal, contact) and Wilson intervals.

Reference: The American Association for Public Opinion Research, *Standard Definitions: Final
Dispositions of Case Codes and Outcome Rates for Surveys* (the RR1-RR6, COOP1-4, REF1-3 and
CON1-3 formulas below are its own). Disposition codes:

    I  complete            P  partial
    R  refusal / break-off NC non-contact          O  other eligible non-interview
    UH unknown if household / occupied (here: unknown if the contact reached anyone)
    UO unknown, other      NE not eligible

With e the estimated share of eligible cases among those of unknown eligibility:

    RR1 = I / ((I+P) + (R+NC+O) + (UH+UO))       RR2 = (I+P) / (same)
    RR3 = I / ((I+P) + (R+NC+O) + e(UH+UO))      RR4 = (I+P) / (same)
    RR5 = I / ((I+P) + (R+NC+O))                 RR6 = (I+P) / (same)
    COOP1 = I / ((I+P) + R + O)                  COOP2 = (I+P) / ((I+P) + R + O)
    COOP3 = I / ((I+P) + R)                      COOP4 = (I+P) / ((I+P) + R)
    REF1 = R / ((I+P) + (R+NC+O) + (UH+UO))
    REF2 = R / ((I+P) + (R+NC+O) + e(UH+UO))
    REF3 = R / ((I+P) + (R+NC+O))
    CON1 = ((I+P) + R + O) / ((I+P) + (R+NC+O) + (UH+UO))
    CON2 = ((I+P) + R + O) / ((I+P) + (R+NC+O) + e(UH+UO))
    CON3 = ((I+P) + R + O) / ((I+P) + (R+NC+O))

Default e = (I+P+R+NC+O) / (I+P+R+NC+O+NE), the eligible share among cases whose eligibility is
known (AAPOR's "proportional allocation" / CASRO method). A ratio 0/0 is None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from reports.stats.nps import json_float, json_pair


@dataclass(frozen=True, slots=True)
class Dispositions:
    """Final disposition counts, AAPOR codes (see the module docstring)."""

    I: int  # noqa: E741 - AAPOR's own code
    P: int
    R: int
    NC: int
    O: int  # noqa: E741 - AAPOR's own code
    UH: int
    UO: int
    NE: int

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{f.name} must be an integer count, got {value!r}")
            if value < 0:
                raise ValueError(f"{f.name} must be >= 0, got {value}")

    @property
    def total(self) -> int:
        """All cases, eligible or not."""
        return sum(getattr(self, f.name) for f in fields(self))


RATE_KEYS = (
    "RR1",
    "RR2",
    "RR3",
    "RR4",
    "RR5",
    "RR6",
    "COOP1",
    "COOP2",
    "COOP3",
    "COOP4",
    "REF1",
    "REF2",
    "REF3",
    "CON1",
    "CON2",
    "CON3",
)


@dataclass(frozen=True, slots=True)
class AaporRates:
    """The sixteen AAPOR rates (0..1, None when 0/0) and the e used."""

    RR1: float | None
    RR2: float | None
    RR3: float | None
    RR4: float | None
    RR5: float | None
    RR6: float | None
    COOP1: float | None
    COOP2: float | None
    COOP3: float | None
    COOP4: float | None
    REF1: float | None
    REF2: float | None
    REF3: float | None
    CON1: float | None
    CON2: float | None
    CON3: float | None
    e: float | None

    def to_dict(self) -> dict[str, float | None]:
        """Keys exactly "RR1".."RR6", "COOP1".."COOP4", "REF1".."REF3", "CON1".."CON3", "e"."""
        out = {key: json_float(getattr(self, key)) for key in RATE_KEYS}
        out["e"] = json_float(self.e)
        return out


def _ratio(num: float, den: float | None) -> float | None:
    if den is None or den == 0:
        return None
    return num / den


def default_e(d: Dispositions) -> float | None:
    """(I+P+R+NC+O) / (I+P+R+NC+O+NE); None when no case has a known eligibility."""
    eligible = d.I + d.P + d.R + d.NC + d.O
    return _ratio(eligible, eligible + d.NE)


def aapor_rates(d: Dispositions, e: float | None = None) -> AaporRates:
    """All AAPOR outcome rates for the dispositions; ``e`` defaults to :func:`default_e`.

    If e is undefined (no case of known eligibility) the e-dependent rates are None unless there
    are no unknown-eligibility cases (then e does not matter).
    """
    if e is None:
        e = default_e(d)
    elif not (math.isfinite(e) and 0.0 <= e <= 1.0):
        raise ValueError(f"e must be in [0, 1], got {e!r}")
    interviews = d.I + d.P
    known = interviews + d.R + d.NC + d.O
    unknown = d.UH + d.UO
    all_cases = known + unknown
    e_cases: float | None
    if unknown == 0:
        e_cases = float(known)
    elif e is None:
        e_cases = None
    else:
        e_cases = known + e * unknown
    contacted = interviews + d.R + d.O
    return AaporRates(
        RR1=_ratio(d.I, all_cases),
        RR2=_ratio(interviews, all_cases),
        RR3=_ratio(d.I, e_cases),
        RR4=_ratio(interviews, e_cases),
        RR5=_ratio(d.I, known),
        RR6=_ratio(interviews, known),
        COOP1=_ratio(d.I, contacted),
        COOP2=_ratio(interviews, contacted),
        COOP3=_ratio(d.I, interviews + d.R),
        COOP4=_ratio(interviews, interviews + d.R),
        REF1=_ratio(d.R, all_cases),
        REF2=_ratio(d.R, e_cases),
        REF3=_ratio(d.R, known),
        CON1=_ratio(contacted, all_cases),
        CON2=_ratio(contacted, e_cases),
        CON3=_ratio(contacted, known),
        e=e,
    )


@dataclass(frozen=True, slots=True)
class RateInterval:
    """A proportion ``count / nobs`` with its Wilson 95% interval; None when nobs == 0."""

    count: float
    nobs: float
    rate: float | None
    ci95: tuple[float, float] | None

    def to_dict(self) -> dict[str, object]:
        """Keys: count, nobs, rate, ci95."""
        return {
            "count": self.count,
            "nobs": self.nobs,
            "rate": json_float(self.rate),
            "ci95": json_pair(self.ci95),
        }


def wilson_rate(count: float, nobs: float) -> RateInterval:
    """``count / nobs`` with the Wilson score interval (Wilson 1927), 95%.

    Computed by ``statsmodels.stats.proportion.proportion_confint(method="wilson")``. Counts may
    be fractional (e.g. an e-weighted denominator), which the Wilson formula allows.
    """
    if not (math.isfinite(count) and math.isfinite(nobs)) or count < 0 or nobs < count:
        raise ValueError(f"need 0 <= count <= nobs, got {count!r} / {nobs!r}")
    if nobs == 0:
        return RateInterval(count, nobs, None, None)
    # Imported here: statsmodels (with scipy and pandas) takes seconds to import, and only the
    # report needs it, not every process that imports this package.
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(count, nobs, alpha=0.05, method="wilson")
    return RateInterval(count, nobs, count / nobs, (float(low), float(high)))
