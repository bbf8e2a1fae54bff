"""NPS point estimate, adjusted-Wald interval, comparison, bands, per-group timing report."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reports.stats.nps import (
    DEFAULT_BANDS,
    NpsBands,
    classify_score,
    compare_nps,
    count_categories,
    nps_summary,
)
from reports.stats.timing import GroupCounts, timing_report

Z = 1.959963984540054


# --------------------------------------------------------------------------- bands


def test_default_bands_classify_every_score():
    assert [classify_score(s) for s in range(11)] == ["detractor"] * 7 + ["passive"] * 2 + [
        "promoter"
    ] * 2


def test_values_are_vectorised_and_nan_outside_bands():
    out = DEFAULT_BANDS.values([0, 6, 7, 8, 9, 10, np.nan, 11, 6.5])
    assert out[:6].tolist() == [-100, -100, 0, 0, 100, 100]
    assert np.isnan(out[6:]).all()


def test_count_categories():
    assert count_categories([10, 9, 9, 8, 7, 0, 6, 3]) == (3, 2, 3)


def test_custom_bands_with_a_gap():
    bands = NpsBands(detractor=(1, 5), passive=(6, 8), promoter=(9, 10))
    assert classify_score(6, bands) == "passive"
    assert classify_score(5, bands) == "detractor"
    with pytest.raises(ValueError, match="no NPS band"):
        classify_score(0, bands)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"detractor": (0, 7)},  # overlaps passive
        {"promoter": (9, 11)},  # outside 0..10
        {"passive": (8, 7)},  # low > high
        {"detractor": (-1, 6)},
    ],
)
def test_invalid_bands_are_rejected(kwargs):
    with pytest.raises(ValueError):
        NpsBands(**kwargs)


# --------------------------------------------------------------------------- one sample


def test_50_30_20_by_hand():
    est = nps_summary(50, 30, 20)
    assert est.n == 100
    assert est.nps == pytest.approx(30.0)
    assert est.shares is not None
    assert (est.shares.promoters, est.shares.passives, est.shares.detractors) == (0.5, 0.3, 0.2)
    # plain SE: sqrt((0.5 + 0.2 - 0.3^2) / 100) = sqrt(0.0061)
    assert est.se == pytest.approx(100 * math.sqrt(0.0061))
    # adjusted Wald: n' = 103, pP' = 50.75/103, pD' = 20.75/103
    p_p, p_d = 50.75 / 103, 20.75 / 103
    var = (p_p + p_d - (p_p - p_d) ** 2) / 103  # (71.5/103 - (30/103)^2) / 103
    half = Z * math.sqrt(var)
    assert est.se_adjusted == pytest.approx(100 * math.sqrt(var))
    assert est.ci95 is not None
    assert est.ci95[0] == pytest.approx(100 * (30 / 103 - half))
    assert est.ci95[1] == pytest.approx(100 * (30 / 103 + half))
    # pinned numbers (same arithmetic done once by hand)
    assert est.ci95 == pytest.approx((14.0511, 44.2013), abs=1e-3)
    assert est.se_adjusted == pytest.approx(7.6915, abs=1e-4)


def test_all_promoters_upper_bound_clipped():
    est = nps_summary(20, 0, 0)
    assert est.nps == 100.0
    assert est.se == 0.0  # the plain variance vanishes ...
    # ... the adjusted one does not: n' = 23, pP' = 20.75/23, pD' = 0.75/23
    p_p, p_d = 20.75 / 23, 0.75 / 23
    var = (p_p + p_d - (20 / 23) ** 2) / 23
    assert est.ci95 is not None
    assert est.ci95[0] == pytest.approx(100 * (20 / 23 - Z * math.sqrt(var)))
    assert est.ci95[0] == pytest.approx(69.683, abs=1e-3)
    assert 20 / 23 + Z * math.sqrt(var) > 1  # so the upper end is clipped
    assert est.ci95[1] == 100.0
    assert isinstance(est.ci95[1], float)


def test_all_detractors_lower_bound_clipped():
    est = nps_summary(0, 0, 20)
    assert est.nps == -100.0
    assert est.ci95 is not None
    assert est.ci95[0] == -100.0
    assert est.ci95[1] == pytest.approx(-69.683, abs=1e-3)


def test_no_answers_gives_none():
    est = nps_summary(0, 0, 0)
    assert est.n == 0
    assert est.nps is None
    assert est.ci95 is None
    assert est.se is None
    assert est.shares is None
    assert est.to_dict()["nps"] is None


@pytest.mark.parametrize("bad", [(-1, 0, 0), (1.5, 0, 0), (True, 0, 0)])
def test_bad_counts_rejected(bad):
    with pytest.raises((ValueError, TypeError)):
        nps_summary(*bad)


def test_to_dict_is_json():
    d = nps_summary(50, 30, 20).to_dict()
    assert set(d) == {
        "nps",
        "n",
        "promoters",
        "passives",
        "detractors",
        "shares",
        "se",
        "se_adjusted",
        "ci95",
    }
    assert d["ci95"] == pytest.approx([14.0511, 44.2013], abs=1e-3)
    assert d["shares"] == {"promoters": 0.5, "passives": 0.3, "detractors": 0.2}
    json.dumps(d, allow_nan=False)


@given(
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.integers(0, 10_000),
)
def test_interval_is_ordered_and_bounded(p, q, d):
    est = nps_summary(p, q, d)
    if p + q + d == 0:
        assert est.ci95 is None
        return
    assert est.ci95 is not None
    low, high = est.ci95
    assert -100 <= low < high <= 100
    assert est.nps == pytest.approx(100 * (p - d) / (p + q + d))


# --------------------------------------------------------------------------- comparison


def test_compare_by_hand():
    a, b = nps_summary(50, 30, 20), nps_summary(60, 25, 15)
    cmp = compare_nps(a, b)
    assert cmp.difference == pytest.approx(15.0)
    # adjusted: a -> n'=103, pP'=50.75/103, pD'=20.75/103; b -> n'=103, 60.75/103, 15.75/103
    ca, cb = 30 / 103, 45 / 103
    va = (71.5 / 103 - ca**2) / 103
    vb = (76.5 / 103 - cb**2) / 103
    se = 100 * math.sqrt(va + vb)
    z = 100 * (cb - ca) / se
    assert cmp.se == pytest.approx(se)
    assert cmp.z == pytest.approx(z)
    assert cmp.p_value == pytest.approx(2 * (1 - NormalDist().cdf(abs(z))))
    assert cmp.p_value == pytest.approx(0.1702, abs=1e-4)
    assert cmp.ci95 == pytest.approx((100 * (cb - ca) - Z * se, 100 * (cb - ca) + Z * se))
    json.dumps(cmp.to_dict(), allow_nan=False)


def test_compare_is_antisymmetric():
    a, b = nps_summary(5, 3, 9), nps_summary(40, 10, 2)
    ab, ba = compare_nps(a, b), compare_nps(b, a)
    assert ab.difference == pytest.approx(-ba.difference)
    assert ab.z == pytest.approx(-ba.z)
    assert ab.p_value == pytest.approx(ba.p_value)


def test_compare_detects_a_big_difference():
    cmp = compare_nps(nps_summary(100, 100, 800), nps_summary(800, 100, 100))
    assert cmp.p_value is not None
    assert cmp.p_value < 1e-12
    assert cmp.ci95 is not None
    assert cmp.ci95[0] > 100


def test_compare_identical_groups():
    cmp = compare_nps(nps_summary(10, 5, 5), nps_summary(10, 5, 5))
    assert cmp.difference == 0.0
    assert cmp.z == 0.0
    assert cmp.p_value == pytest.approx(1.0)


def test_compare_with_empty_side_is_none():
    cmp = compare_nps(nps_summary(0, 0, 0), nps_summary(1, 2, 3))
    assert cmp.difference is None
    assert cmp.p_value is None
    assert cmp.to_dict()["ci95"] is None


@given(
    st.tuples(st.integers(0, 300), st.integers(0, 300), st.integers(0, 300)),
    st.tuples(st.integers(0, 300), st.integers(0, 300), st.integers(0, 300)),
)
def test_test_and_interval_agree(ca, cb):
    cmp = compare_nps(nps_summary(*ca), nps_summary(*cb))
    if cmp.p_value is None or cmp.ci95 is None:
        assert sum(ca) == 0 or sum(cb) == 0
        return
    if abs(cmp.p_value - 0.05) > 1e-9:
        assert (cmp.p_value < 0.05) == (cmp.ci95[0] > 0 or cmp.ci95[1] < 0)


# --------------------------------------------------------------------------- timing


def test_timing_report_by_arm():
    report = timing_report(
        {
            "3d": GroupCounts(promoters=50, passives=30, detractors=20, invited=400),
            "7d": GroupCounts(promoters=60, passives=25, detractors=15, invited=500),
            "14d": GroupCounts(promoters=0, passives=0, detractors=0, invited=10),
        }
    )
    assert [g.label for g in report] == ["3d", "7d", "14d"]
    first, second, empty = report
    assert first.vs_reference is None
    assert first.nps.nps == pytest.approx(30.0)
    assert first.response_rate.rate == pytest.approx(0.25)
    assert second.response_rate.rate == pytest.approx(0.2)
    assert second.vs_reference is not None
    assert second.vs_reference.p_value == pytest.approx(0.1702, abs=1e-4)
    assert empty.nps.nps is None
    assert empty.response_rate.rate == 0.0
    assert empty.vs_reference is not None
    assert empty.vs_reference.difference is None
    for g in report:
        json.dumps(g.to_dict(), allow_nan=False)


def test_timing_report_named_reference_and_validation():
    groups = {
        "a": GroupCounts(1, 1, 1, 10),
        "b": GroupCounts(3, 0, 0, 3),
    }
    report = timing_report(groups, reference="b")
    assert report[1].vs_reference is None
    assert report[0].vs_reference is not None
    assert report[0].vs_reference.difference == pytest.approx(-100.0)
    with pytest.raises(KeyError):
        timing_report(groups, reference="zzz")
    with pytest.raises(ValueError):
        GroupCounts(5, 0, 0, 4)
    assert timing_report({}) == ()
