"""Grouped rows with frequency weights give the per-invitee adjustment.

The reference is the adjustment as it was computed one row per invitee
(``tests/reports/stats/per_row``). Each population is fitted three ways: by the reference row by
row, by :func:`adjust_nps` row by row, and by :func:`adjust_nps` on the distinct rows (covariates,
outcome, score) with their counts; every figure must agree to 1e-9 (the ridge fallback, found by a
quasi-Newton search that stops at a gradient tolerance, to 1e-5).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from reports.stats.adjustment import AdjustedNps, adjust_nps
from reports.stats.covariates import Categorical
from tests.reports.stats.per_row.adjustment import adjust_nps as per_row_adjust_nps
from tests.reports.stats.test_adjustment import saturated_case, simulate, small_case


def grouped(covariates: dict[str, Any], responded, scores):
    """The distinct rows of (covariates, responded, score) and how many invitees each holds."""
    names = list(covariates)
    columns = [np.asarray(covariates[k]) for k in names]
    keys = [np.unique(col, return_inverse=True)[1] for col in columns]
    score_key = np.where(np.isnan(scores), -1, scores).astype(np.int64)
    stacked = np.column_stack([*keys, np.asarray(responded, dtype=np.int64), score_key])
    _, first, counts = np.unique(stacked, axis=0, return_index=True, return_counts=True)
    out = {k: col[first] for k, col in zip(names, columns, strict=True)}
    return out, np.asarray(responded)[first], np.asarray(scores)[first], counts


def assert_same(got: AdjustedNps, expected: AdjustedNps, tol: float) -> None:
    for f in dataclasses.fields(AdjustedNps):
        if f.name == "model_rows":
            continue  # the reference had none
        g, e = getattr(got, f.name), getattr(expected, f.name)
        if f.name == "smd":
            assert [b.covariate for b in g] == [b.covariate for b in e]
            assert [b.flagged for b in g] == [b.flagged for b in e]
            for b_g, b_e in zip(g, e, strict=True):
                assert math.isclose(b_g.smd, b_e.smd, rel_tol=tol, abs_tol=tol), b_e
                assert math.isclose(b_g.smd_weighted, b_e.smd_weighted, rel_tol=tol, abs_tol=tol)
        elif f.name == "bounds":
            assert (g is None) == (e is None)
            if e is not None:
                assert math.isclose(g.worst, e.worst, rel_tol=tol, abs_tol=tol)
                assert math.isclose(g.best, e.best, rel_tol=tol, abs_tol=tol)
        elif isinstance(e, float):
            assert math.isclose(g, e, rel_tol=tol, abs_tol=tol), (f.name, g, e)
        elif isinstance(e, tuple) and e and isinstance(e[0], float):
            assert g == pytest.approx(e, rel=tol, abs=tol), f.name
        else:
            assert g == e, f.name


def biased(seed: int, n: int = 30_000):
    """The simulated biased population with the order value in 30 steps: invitees share rows."""
    covariates, responded, scores, _ = simulate(seed, n)
    covariates["log_order_value"] = np.round(covariates["log_order_value"] * 6) / 6
    return covariates, responded, scores


def clipping():
    level = np.array(["common"] * 1000 + ["rare"] * 1000 + ["mid"] * 400)
    responded = np.zeros(level.size, dtype=bool)
    responded[:500] = True
    responded[1000:1005] = True
    responded[2000:2150] = True
    scores = np.where(responded, np.arange(level.size) % 11, np.nan)
    return {"level": level}, responded, scores


def separated():
    covariates, responded, scores = small_case()
    separator = np.round(np.where(responded, 5.0, -5.0) + covariates["x"] * 0.1, 1)
    return {"separator": separator, "channel": covariates["channel"]}, responded, scores


def discrete_small():
    covariates, responded, scores = small_case()
    return {"x": np.round(covariates["x"], 1), "channel": covariates["channel"]}, responded, scores


def saturated():
    level, responded, scores = saturated_case()
    return {"level": level}, responded, scores


POPULATIONS = {
    "biased": lambda: biased(1),
    "biased_other_seed": lambda: biased(7, 12_000),
    "clipping": clipping,
    "separated": separated,
    "discrete_small": discrete_small,
    "saturated": saturated,
}


@pytest.mark.parametrize("name", sorted(POPULATIONS))
def test_grouped_rows_give_the_per_invitee_adjustment(name):
    covariates, responded, scores = POPULATIONS[name]()
    reference = per_row_adjust_nps(covariates, responded, scores)
    tol = 1e-9
    assert_same(adjust_nps(covariates, responded, scores), reference, tol)

    g_cov, g_resp, g_scores, counts = grouped(covariates, responded, scores)
    assert counts.size < responded.size  # rows were merged
    result = adjust_nps(g_cov, g_resp, g_scores, counts=counts)
    assert_same(result, reference, tol)
    assert result.model_rows == counts.size and result.to_dict()["model_rows"] == counts.size
    if name == "separated":
        assert reference.fit == "ridge"
    if name == "clipping":
        assert reference.n_clipped == 5


@pytest.mark.parametrize("decimals", [None, 4])
def test_many_rows_start_from_a_subsample_and_reach_the_same_fit(decimals):
    """Over 100,000 rows Newton starts from a fit on a subsample: same estimate. Continuous
    values (every row one invitee: Logit), or rounded so that some invitees share a row (GLM
    with frequency weights)."""
    covariates, responded, scores, _ = simulate(17, 220_000)
    if decimals is not None:
        covariates["log_order_value"] = np.round(covariates["log_order_value"], decimals)
    reference = per_row_adjust_nps(covariates, responded, scores)
    g_cov, g_resp, g_scores, counts = grouped(covariates, responded, scores)
    assert counts.size > 100_000
    assert bool(counts.max() > 1) is (decimals is not None)
    assert_same(adjust_nps(g_cov, g_resp, g_scores, counts=counts), reference, 1e-9)


def test_precoded_categories_with_unused_levels_are_the_strings():
    """A :class:`Categorical` whose levels include some no row has equals the string column."""
    covariates, responded, scores = biased(3, 5_000)
    expected = adjust_nps(covariates, responded, scores)
    levels, codes = np.unique(covariates["channel"], return_inverse=True)
    padded = ("aaa", *(str(x) for x in levels), "zzz")
    precoded = dict(covariates)
    precoded["channel"] = Categorical("channel", padded, codes + 1)
    assert_same(adjust_nps(precoded, responded, scores), expected, 1e-12)


def test_counts_are_checked():
    covariates, responded, scores = discrete_small()
    with pytest.raises(ValueError, match="positive integers"):
        adjust_nps(covariates, responded, scores, counts=np.zeros(responded.size))
    with pytest.raises(ValueError, match="positive integers"):
        adjust_nps(covariates, responded, scores, counts=np.full(responded.size, 1.5))
