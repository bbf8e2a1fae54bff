"""AAPOR outcome rates recomputed by hand, and the Wilson interval."""

from __future__ import annotations

import json
import math

import pytest

from reports.stats.aapor import Dispositions, aapor_rates, default_e, wilson_rate

KEYS = [
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
    "e",
]

# I=400 P=50 R=120 NC=200 O=30 UH=100 UO=50 NE=50
TABLE = Dispositions(I=400, P=50, R=120, NC=200, O=30, UH=100, UO=50, NE=50)


def expected(e: float) -> dict[str, float]:
    """Every AAPOR formula written out with the numbers of TABLE."""
    all_cases = 450 + 350 + 150  # (I+P) + (R+NC+O) + (UH+UO) = 950
    e_cases = 450 + 350 + e * 150
    known = 450 + 350  # 800
    return {
        "RR1": 400 / all_cases,
        "RR2": 450 / all_cases,
        "RR3": 400 / e_cases,
        "RR4": 450 / e_cases,
        "RR5": 400 / known,
        "RR6": 450 / known,
        "COOP1": 400 / (450 + 120 + 30),
        "COOP2": 450 / (450 + 120 + 30),
        "COOP3": 400 / (450 + 120),
        "COOP4": 450 / (450 + 120),
        "REF1": 120 / all_cases,
        "REF2": 120 / e_cases,
        "REF3": 120 / known,
        "CON1": (450 + 120 + 30) / all_cases,
        "CON2": (450 + 120 + 30) / e_cases,
        "CON3": (450 + 120 + 30) / known,
        "e": e,
    }


def test_default_e():
    # (I+P+R+NC+O) / (I+P+R+NC+O+NE) = 800 / 850
    assert default_e(TABLE) == pytest.approx(800 / 850)


def test_rates_with_default_e_by_hand():
    rates = aapor_rates(TABLE)
    got = rates.to_dict()
    assert list(got) == KEYS
    want = expected(800 / 850)
    for key in KEYS:
        assert got[key] == pytest.approx(want[key]), key
    # a few pinned values
    assert got["RR1"] == pytest.approx(400 / 950)
    assert got["RR3"] == pytest.approx(400 / (800 + 150 * 16 / 17))
    assert got["COOP4"] == pytest.approx(450 / 570)
    assert got["RR3"] == rates.RR3
    json.dumps(got, allow_nan=False)


@pytest.mark.parametrize("e", [0.0, 0.5, 1.0])
def test_rates_with_supplied_e(e):
    got = aapor_rates(TABLE, e=e).to_dict()
    want = expected(e)
    for key in KEYS:
        assert got[key] == pytest.approx(want[key]), key
    if e == 1.0:
        assert got["RR3"] == pytest.approx(got["RR1"])
    if e == 0.0:
        assert got["RR3"] == pytest.approx(got["RR5"])


def test_ordering_of_rates():
    r = aapor_rates(TABLE)
    assert r.RR1 is not None and r.RR3 is not None and r.RR5 is not None
    assert r.RR1 <= r.RR3 <= r.RR5
    assert r.RR2 is not None and r.RR1 < r.RR2


def test_empty_table_is_all_none():
    got = aapor_rates(Dispositions(0, 0, 0, 0, 0, 0, 0, 0)).to_dict()
    assert all(got[key] is None for key in KEYS)


def test_only_unknown_cases():
    # e = 0/0 is undefined, so the e-rates are too; the others are 0 / 10
    rates = aapor_rates(Dispositions(I=0, P=0, R=0, NC=0, O=0, UH=6, UO=4, NE=0))
    assert rates.e is None
    assert rates.RR1 == 0.0
    assert rates.CON1 == 0.0
    assert rates.RR3 is None
    assert rates.REF2 is None
    assert rates.RR5 is None  # 0 / 0
    assert rates.COOP1 is None


def test_no_unknowns_makes_e_irrelevant():
    d = Dispositions(I=8, P=2, R=5, NC=3, O=2, UH=0, UO=0, NE=7)
    a, b = aapor_rates(d, e=0.1), aapor_rates(d, e=0.9)
    assert a.RR3 == b.RR3 == a.RR1
    assert a.to_dict()["RR1"] == pytest.approx(8 / 20)
    assert a.to_dict()["CON2"] == pytest.approx((10 + 5 + 2) / 20)


@pytest.mark.parametrize("e", [-0.1, 1.5, math.nan])
def test_bad_e_rejected(e):
    with pytest.raises(ValueError):
        aapor_rates(TABLE, e=e)


def test_bad_counts_rejected():
    with pytest.raises(ValueError):
        Dispositions(I=-1, P=0, R=0, NC=0, O=0, UH=0, UO=0, NE=0)
    with pytest.raises(TypeError):
        Dispositions(I=1.5, P=0, R=0, NC=0, O=0, UH=0, UO=0, NE=0)
    assert TABLE.total == 1000


def test_wilson_by_hand():
    got = wilson_rate(30, 100)
    z = 1.959963984540054
    p, n = 0.3, 100
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert got.rate == pytest.approx(0.3)
    assert got.ci95 is not None
    assert got.ci95[0] == pytest.approx(centre - half)
    assert got.ci95[1] == pytest.approx(centre + half)
    assert got.ci95 == pytest.approx((0.2189, 0.3958), abs=1e-4)
    json.dumps(got.to_dict(), allow_nan=False)


def test_wilson_edges():
    zero = wilson_rate(0, 20)
    assert zero.rate == 0.0
    assert zero.ci95 is not None
    assert zero.ci95[0] == pytest.approx(0.0, abs=1e-12)
    assert zero.ci95[1] > 0.1
    assert wilson_rate(0, 0).rate is None
    assert wilson_rate(0, 0).ci95 is None
    with pytest.raises(ValueError):
        wilson_rate(5, 4)
