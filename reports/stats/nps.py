"""Net Promoter Score: bands, point estimate, adjusted-Wald interval, two-sample comparison.

NPS = 100 * (share of promoters - share of detractors), i.e. the mean of +100 (promoter),
0 (passive) and -100 (detractor) over the answers; it lies in [-100, 100].

Interval: the *adjusted Wald* interval (Rocks 2016, "Interval estimation for the 'net promoter
score'", The American Statistician 70(4), 365-372). Add 3 pseudo-answers split 0.75 detractor /
1.5 passive / 0.75 promoter, then with n' = n + 3, pP' = (P + 0.75) / n', pD' = (D + 0.75) / n':

    NPS'  = pP' - pD'
    Var'  = (pP' + pD' - (pP' - pD')**2) / n'
    ci95  = 100 * (NPS' +/- 1.96 * sqrt(Var')), clipped to [-100, 100]

The point estimate stays the raw NPS. The variance form is that of the mean of a three-valued
variable taking +1 / 0 / -1: E[X^2] - E[X]^2 = pP + pD - (pP - pD)^2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from config import BandName

Z95 = 1.959963984540054
"""Two-sided 95% normal quantile."""

PSEUDO_PROMOTERS = 0.75
PSEUDO_PASSIVES = 1.5
PSEUDO_DETRACTORS = 0.75
PSEUDO_TOTAL = PSEUDO_PROMOTERS + PSEUDO_PASSIVES + PSEUDO_DETRACTORS

FloatArray = npt.NDArray[np.float64]


def json_float(value: float | None) -> float | None:
    """A plain Python float for JSON, or None for None / NaN / +-inf."""
    if value is None:
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def json_pair(pair: tuple[float, float] | None) -> list[float | None] | None:
    """An interval as a JSON list ``[low, high]``, or None."""
    if pair is None:
        return None
    return [json_float(pair[0]), json_float(pair[1])]


# --------------------------------------------------------------------------- bands


@dataclass(frozen=True, slots=True)
class NpsBands:
    """Inclusive score ranges of the three categories on the 0-10 scale.

    The standard bands are detractor 0-6, passive 7-8, promoter 9-10. Bands must lie in 0..10, be
    non-empty and ordered detractor < passive < promoter without overlap. Gaps are allowed (e.g.
    the 1-5 / 6-8 / 9-10 variant of some marketing texts leaves 0 unclassified); a score in no
    band is rejected by :meth:`classify`.
    """

    detractor: tuple[int, int] = (0, 6)
    passive: tuple[int, int] = (7, 8)
    promoter: tuple[int, int] = (9, 10)

    def __post_init__(self) -> None:
        bands = (
            ("detractor", self.detractor),
            ("passive", self.passive),
            ("promoter", self.promoter),
        )
        for name, (low, high) in bands:
            if not (isinstance(low, int) and isinstance(high, int)):
                raise TypeError(f"{name} band bounds must be integers, got {(low, high)!r}")
            if not 0 <= low <= high <= 10:
                raise ValueError(f"{name} band {(low, high)} must satisfy 0 <= low <= high <= 10")
        if not (self.detractor[1] < self.passive[0] and self.passive[1] < self.promoter[0]):
            raise ValueError(
                "bands must be ordered detractor < passive < promoter without overlap, got "
                f"{self.detractor}, {self.passive}, {self.promoter}"
            )

    def classify(self, score: float) -> BandName:
        """The category of one score; ValueError when it is in no band."""
        order: tuple[tuple[BandName, tuple[int, int]], ...] = (
            ("promoter", self.promoter),
            ("passive", self.passive),
            ("detractor", self.detractor),
        )
        for name, (low, high) in order:
            if low <= score <= high:
                return name
        raise ValueError(f"score {score!r} is in no NPS band")

    def values(self, scores: npt.ArrayLike) -> FloatArray:
        """Vectorised: +100 / 0 / -100 per score, NaN where the score is NaN or in no band."""
        s = np.asarray(scores, dtype=np.float64)
        out = np.full(s.shape, np.nan)
        for value, (low, high) in (
            (100.0, self.promoter),
            (0.0, self.passive),
            (-100.0, self.detractor),
        ):
            out[(s >= low) & (s <= high)] = value
        return out


DEFAULT_BANDS = NpsBands()


def classify_score(score: float, bands: NpsBands = DEFAULT_BANDS) -> BandName:
    """``"promoter"``, ``"passive"`` or ``"detractor"`` for one 0-10 score."""
    return bands.classify(score)


def count_categories(
    scores: Iterable[float], bands: NpsBands = DEFAULT_BANDS
) -> tuple[int, int, int]:
    """(promoters, passives, detractors) among the scores; ValueError on a score in no band."""
    counts = {"promoter": 0, "passive": 0, "detractor": 0}
    for score in scores:
        counts[bands.classify(score)] += 1
    return counts["promoter"], counts["passive"], counts["detractor"]


# --------------------------------------------------------------------------- one sample


@dataclass(frozen=True, slots=True)
class NpsShares:
    """Shares (0..1) of the answers in each category."""

    promoters: float
    passives: float
    detractors: float


@dataclass(frozen=True, slots=True)
class NpsEstimate:
    """NPS of one group of answers.

    ``nps`` is the raw NPS; ``se`` its plain standard error
    100 * sqrt((pP + pD - (pP - pD)^2) / n); ``se_adjusted`` the adjusted-Wald standard error
    100 * sqrt(Var') behind ``ci95``. All are None when n == 0.
    """

    nps: float | None
    n: int
    promoters: int
    passives: int
    detractors: int
    shares: NpsShares | None
    se: float | None
    se_adjusted: float | None
    ci95: tuple[float, float] | None

    def to_dict(self) -> dict[str, object]:
        """Keys: nps, n, promoters, passives, detractors, shares, se, se_adjusted, ci95."""
        shares = None
        if self.shares is not None:
            shares = {
                "promoters": self.shares.promoters,
                "passives": self.shares.passives,
                "detractors": self.shares.detractors,
            }
        return {
            "nps": json_float(self.nps),
            "n": self.n,
            "promoters": self.promoters,
            "passives": self.passives,
            "detractors": self.detractors,
            "shares": shares,
            "se": json_float(self.se),
            "se_adjusted": json_float(self.se_adjusted),
            "ci95": json_pair(self.ci95),
        }


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{name} must be an integer count, got {value!r}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def trinomial_variance(p_promoter: float, p_detractor: float, n: float) -> float:
    """Variance of the mean of +1/0/-1 answers: (pP + pD - (pP - pD)^2) / n (proportion scale)."""
    return (p_promoter + p_detractor - (p_promoter - p_detractor) ** 2) / n


def adjusted_wald(promoters: int, passives: int, detractors: int) -> tuple[float, float]:
    """(NPS', Var') on the proportion scale (-1..1), with the 0.75/1.5/0.75 pseudo-answers."""
    n_adj = promoters + passives + detractors + PSEUDO_TOTAL
    p_p = (promoters + PSEUDO_PROMOTERS) / n_adj
    p_d = (detractors + PSEUDO_DETRACTORS) / n_adj
    return p_p - p_d, trinomial_variance(p_p, p_d, n_adj)


def _clip(value: float, low: float, high: float) -> float:
    return float(min(max(value, low), high))


def nps_summary(promoters: int, passives: int, detractors: int) -> NpsEstimate:
    """Raw NPS with the adjusted-Wald 95% interval (see the module docstring)."""
    _check_counts(promoters=promoters, passives=passives, detractors=detractors)
    promoters, passives, detractors = int(promoters), int(passives), int(detractors)
    n = promoters + passives + detractors
    if n == 0:
        return NpsEstimate(None, 0, 0, 0, 0, None, None, None, None)
    p_p, p_d = promoters / n, detractors / n
    centre, var_adj = adjusted_wald(promoters, passives, detractors)
    half = Z95 * math.sqrt(var_adj)
    ci = (_clip(100 * (centre - half), -100, 100), _clip(100 * (centre + half), -100, 100))
    return NpsEstimate(
        nps=100 * (p_p - p_d),
        n=n,
        promoters=promoters,
        passives=passives,
        detractors=detractors,
        shares=NpsShares(p_p, passives / n, p_d),
        se=100 * math.sqrt(trinomial_variance(p_p, p_d, n)),
        se_adjusted=100 * math.sqrt(var_adj),
        ci95=ci,
    )


# --------------------------------------------------------------------------- two samples


@dataclass(frozen=True, slots=True)
class NpsComparison:
    """b minus a: ``difference`` is the raw b.nps - a.nps; the rest use the adjusted counts."""

    difference: float | None
    se: float | None
    z: float | None
    p_value: float | None
    ci95: tuple[float, float] | None

    def to_dict(self) -> dict[str, object]:
        """Keys: difference, se, z, p_value, ci95."""
        return {
            "difference": json_float(self.difference),
            "se": json_float(self.se),
            "z": json_float(self.z),
            "p_value": json_float(self.p_value),
            "ci95": json_pair(self.ci95),
        }


def compare_nps(a: NpsEstimate, b: NpsEstimate) -> NpsComparison:
    """Two-sided z-test and 95% interval for NPS(b) - NPS(a), independent samples.

    Variance: the *adjusted* one, Var'_a + Var'_b, each from its side's counts plus the
    0.75/1.5/0.75 pseudo-answers, and the test and interval are centred on NPS'_b - NPS'_a:

        se = 100 * sqrt(Var'_a + Var'_b)
        z  = 100 * (NPS'_b - NPS'_a) / se,   p = erfc(|z| / sqrt(2))
        ci95 = 100 * (NPS'_b - NPS'_a) +/- 1.96 * se, clipped to [-200, 200]

    Why adjusted rather than the plain (pP + pD - (pP - pD)^2) / n: the plain variance is zero
    for a small group whose answers are all alike (e.g. 12 promoters out of 12), which would give
    a zero-width interval and an infinite z; adding pseudo-answers to each sample is the
    Agresti & Caffo (2000, The American Statistician 54(4)) remedy for Wald intervals of a
    difference, and it keeps the comparison consistent with the one-sample intervals. With the
    same centre for test and interval, p < 0.05 exactly when 0 is outside ci95. For large n the
    two variances agree. ``difference`` itself is the raw b - a. Undefined (None) if either side
    has no answers.
    """
    if a.n == 0 or b.n == 0 or a.nps is None or b.nps is None:
        return NpsComparison(None, None, None, None, None)
    centre_a, var_a = adjusted_wald(a.promoters, a.passives, a.detractors)
    centre_b, var_b = adjusted_wald(b.promoters, b.passives, b.detractors)
    se = 100 * math.sqrt(var_a + var_b)
    centre = 100 * (centre_b - centre_a)
    z = centre / se
    ci = (_clip(centre - Z95 * se, -200, 200), _clip(centre + Z95 * se, -200, 200))
    return NpsComparison(
        difference=b.nps - a.nps,
        se=se,
        z=z,
        p_value=math.erfc(abs(z) / math.sqrt(2)),
        ci95=ci,
    )
