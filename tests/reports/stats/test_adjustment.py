"""Non-response adjustment: a simulated biased population, hand checks, edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from reports.stats.adjustment import adjust_nps

SEED = 20240611


def nps_values(scores):
    s = np.asarray(scores, dtype=float)
    return np.where(s >= 9, 100.0, np.where(s >= 7, 0.0, -100.0))


def simulate(seed: int, n: int = 20_000):
    """Repeat buyers, app users, bigger baskets and some categories both answer more and score
    higher; the score depends on the covariates only (missing at random given them)."""
    rng = np.random.default_rng(seed)
    repeat = rng.random(n) < 0.35
    channel = rng.choice(np.array(["email", "sms", "app"]), size=n, p=[0.5, 0.3, 0.2])
    category = rng.choice(
        np.array(["electronics", "fashion", "home", "books"]), size=n, p=[0.3, 0.3, 0.25, 0.15]
    )
    log_value = rng.normal(3.5, 0.8, size=n)
    ch_eff = np.select([channel == "sms", channel == "app"], [-0.6, 0.5], 0.0)
    cat_eff = np.select(
        [category == "electronics", category == "home", category == "books"], [-0.3, 0.2, 0.4], 0.0
    )
    eta = -1.3 + 1.8 * repeat + ch_eff + 0.5 * (log_value - 3.5) + cat_eff
    responded = rng.random(n) < 1 / (1 + np.exp(-eta))
    latent = (
        6.2
        + 2.6 * repeat
        + 1.2 * ch_eff
        + 0.8 * (log_value - 3.5)
        + 1.5 * cat_eff
        + rng.normal(0, 2.0, size=n)
    )
    scores_all = np.clip(np.round(latent), 0, 10)
    truth = float(nps_values(scores_all).mean())
    scores = np.where(responded, scores_all, np.nan)
    covariates = {
        "repeat_buyer": repeat.astype(float),
        "channel": channel,
        "category": category,
        "log_order_value": log_value,
    }
    return covariates, responded, scores, truth


@pytest.fixture(scope="module")
def simulated():
    covariates, responded, scores, truth = simulate(SEED)
    return covariates, responded, scores, truth, adjust_nps(covariates, responded, scores)


def test_adjustment_removes_the_bias(simulated):
    _, responded, _, truth, res = simulated
    assert res.n_invited == 20_000
    assert res.n_respondents == int(responded.sum())
    assert res.raw_nps is not None and res.nps is not None
    assert abs(res.raw_nps - truth) > 10
    assert abs(res.nps - truth) < 3
    assert res.ci95 is not None
    assert res.ci95[0] <= truth <= res.ci95[1]
    assert res.ci95[0] < res.nps < res.ci95[1]
    assert res.bounds is not None
    assert res.bounds.worst <= truth <= res.bounds.best
    assert res.n_eff is not None
    assert 0 < res.n_eff < res.n_respondents
    assert res.fit == "logit"
    assert res.warnings == ()
    assert res.n_clipped == 0


def test_driving_covariate_is_flagged(simulated):
    covariates, responded, _, _, res = simulated
    by_name = {b.covariate: b for b in res.smd}
    assert set(by_name) == {
        "repeat_buyer",
        "log_order_value",
        "channel=app",
        "channel=email",
        "channel=sms",
        "category=books",
        "category=electronics",
        "category=fashion",
        "category=home",
    }
    rep = by_name["repeat_buyer"]
    assert rep.flagged
    # recompute by hand: (mean_r - mean_nr) / sqrt((var_r + var_nr) / 2)
    x = covariates["repeat_buyer"]
    xr, xn = x[responded], x[~responded]
    want = (xr.mean() - xn.mean()) / math.sqrt((xr.var() + xn.var()) / 2)
    assert rep.smd == pytest.approx(want)
    assert rep.smd > 0.5
    # after weighting, the responders look like all invitees again
    assert all(abs(b.smd_weighted) < 0.05 for b in res.smd)


def test_bounds_by_hand(simulated):
    _, responded, scores, _, res = simulated
    v = nps_values(scores[responded])
    n, n_nr = responded.size, int((~responded).sum())
    assert res.bounds.worst == pytest.approx((v.sum() - 100 * n_nr) / n)
    assert res.bounds.best == pytest.approx((v.sum() + 100 * n_nr) / n)
    assert res.raw_nps == pytest.approx(v.mean())


def test_to_dict_is_json(simulated):
    d = simulated[-1].to_dict()
    for key in ("nps", "ci95", "n_eff", "smd", "bounds", "raw_nps", "warnings"):
        assert key in d
    assert set(d["smd"][0]) == {"covariate", "smd", "flagged", "smd_weighted"}
    assert set(d["bounds"]) == {"worst", "best"}
    assert d["interval_method"] == "linearised"
    json.dumps(d, allow_nan=False)


# --------------------------------------------------------------------------- hand checks


def saturated_case(seed: int = 5, n: int = 3000):
    rng = np.random.default_rng(seed)
    level = rng.choice(np.array(["a", "b", "c"]), size=n, p=[0.5, 0.3, 0.2])
    rate = np.select([level == "a", level == "b"], [0.6, 0.3], 0.15)
    responded = rng.random(n) < rate
    scores = np.where(responded, rng.integers(0, 11, size=n), np.nan)
    return level, responded, scores


def test_single_categorical_equals_post_stratification():
    """With one categorical covariate the logistic model is saturated: p = the level's response
    rate, the Hajek NPS is the post-stratified mean, and its influence function is
    R / p (v - m_level) + m_level - mu."""
    level, responded, scores = saturated_case()
    res = adjust_nps({"level": level}, responded, scores)
    v = nps_values(scores)
    n = level.size
    means = {lv: v[(level == lv) & responded].mean() for lv in "abc"}
    mu = sum((level == lv).sum() / n * means[lv] for lv in "abc")
    assert res.nps == pytest.approx(mu)
    infl = np.zeros(n)
    for lv in "abc":
        m = level == lv
        p = (m & responded).sum() / m.sum()
        infl[m] = means[lv] - mu
        infl[m & responded] += (v[m & responded] - means[lv]) / p
    se = math.sqrt((infl**2).sum()) / n
    assert res.se == pytest.approx(se, rel=1e-6)
    assert res.ci95 == pytest.approx((mu - 1.959964 * se, mu + 1.959964 * se), rel=1e-5)
    # Kish: weights are N_level / n_level for each responder
    w = np.zeros(n)
    for lv in "abc":
        m = level == lv
        w[m & responded] = m.sum() / (m & responded).sum()
    w = w[responded]
    assert res.n_eff == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert res.max_weight == pytest.approx(w.max())
    assert res.model_columns == ("level=b", "level=c")  # "a" is the most frequent: reference


def test_propensity_floor_caps_weights():
    # level "rare": 1000 invitees, 5 answer -> p = 0.005 < 0.01 -> weight capped at 100
    n_common, n_rare = 1000, 1000
    level = np.array(["common"] * n_common + ["rare"] * n_rare)
    responded = np.zeros(n_common + n_rare, dtype=bool)
    responded[:500] = True
    responded[n_common : n_common + 5] = True
    scores = np.full(level.size, np.nan)
    scores[:500] = 10  # common responders: promoters
    scores[n_common : n_common + 5] = 0  # rare responders: detractors
    res = adjust_nps({"level": level}, responded, scores)
    assert res.n_clipped == 5
    assert res.max_weight == pytest.approx(100.0)
    assert any("capped at 100" in w for w in res.warnings)
    # 500 promoters of weight 2, 5 detractors of weight 100
    assert res.nps == pytest.approx((500 * 2 * 100 - 5 * 100 * 100) / (500 * 2 + 5 * 100))
    looser = adjust_nps({"level": level}, responded, scores, propensity_floor=0.001)
    assert looser.n_clipped == 0
    assert looser.nps == pytest.approx(0.0)  # post-stratified: (100 - 100) / 2


# --------------------------------------------------------------------------- edge cases


def small_case(seed: int = 11, n: int = 4000):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    channel = rng.choice(np.array(["email", "sms"]), size=n)
    responded = rng.random(n) < 1 / (1 + np.exp(-(x - 0.5)))
    scores = np.where(responded, np.clip(np.round(7 + 2 * x + rng.normal(size=n)), 0, 10), np.nan)
    return {"x": x, "channel": channel}, responded, scores


def test_no_responders():
    covariates, responded, _ = small_case()
    res = adjust_nps(covariates, np.zeros_like(responded), np.full(responded.size, np.nan))
    assert res.nps is None and res.raw_nps is None and res.ci95 is None and res.n_eff is None
    assert res.n_respondents == 0
    assert res.bounds is not None
    assert (res.bounds.worst, res.bounds.best) == (-100.0, 100.0)
    assert res.warnings
    json.dumps(res.to_dict(), allow_nan=False)


def test_nobody_invited():
    res = adjust_nps({}, np.array([], dtype=bool), np.array([]))
    assert res.nps is None and res.bounds is None
    json.dumps(res.to_dict(), allow_nan=False)


def test_everyone_responded():
    covariates, responded, _ = small_case()
    scores = np.random.default_rng(3).integers(0, 11, size=responded.size).astype(float)
    res = adjust_nps(covariates, np.ones_like(responded), scores)
    v = nps_values(scores)
    assert res.nps == pytest.approx(res.raw_nps)
    assert res.nps == pytest.approx(v.mean())
    assert res.n_eff == pytest.approx(responded.size)
    assert res.max_weight == 1.0
    assert res.bounds is not None
    assert res.bounds.worst == res.bounds.best == pytest.approx(v.mean())
    assert res.se == pytest.approx(v.std() / math.sqrt(v.size))
    assert res.smd == ()


def test_no_covariates_gives_raw_nps():
    _, responded, scores = small_case()
    res = adjust_nps({}, responded, scores)
    v = nps_values(scores[responded])
    assert res.fit == "intercept"
    assert res.nps == pytest.approx(v.mean())
    assert res.n_eff == pytest.approx(v.size)
    assert res.se == pytest.approx(v.std() / math.sqrt(v.size))


def test_constant_and_single_level_columns_are_left_out():
    covariates, responded, scores = small_case()
    base = adjust_nps(covariates, responded, scores)
    extra = dict(covariates)
    extra["constant"] = np.full(responded.size, 3.0)
    extra["country"] = ["DE"] * responded.size
    res = adjust_nps(extra, responded, scores)
    assert res.nps == pytest.approx(base.nps)
    assert res.se == pytest.approx(base.se)
    assert res.model_columns == base.model_columns == ("x", "channel=sms")
    assert any("'constant' is constant" in w for w in res.warnings)
    assert any("'country' has a single level" in w for w in res.warnings)
    smd = {b.covariate: b for b in res.smd}
    assert smd["constant"].smd == 0.0 and not smd["constant"].flagged
    assert smd["country=DE"].smd == 0.0
    assert smd["x"].flagged  # x drives the response


def test_collinear_column_is_dropped():
    covariates, responded, scores = small_case()
    base = adjust_nps(covariates, responded, scores)
    extra = dict(covariates)
    extra["x_twice"] = 2 * covariates["x"] + 1
    res = adjust_nps(extra, responded, scores)
    assert res.nps == pytest.approx(base.nps)
    assert res.se == pytest.approx(base.se)
    assert "x_twice" not in res.model_columns
    assert any("collinear" in w for w in res.warnings)


def test_separating_level_is_merged_into_reference():
    covariates, responded, scores = small_case()
    channel = covariates["channel"].astype(object)
    channel[np.flatnonzero(~responded)[:50]] = "fax"  # nobody on fax answers
    res = adjust_nps({**covariates, "channel": channel}, responded, scores)
    assert res.fit == "logit"
    assert "channel=fax" not in res.model_columns
    assert any("['fax']" in w and "merged" in w for w in res.warnings)
    assert res.nps is not None and math.isfinite(res.nps)


def test_separating_numeric_column_falls_back_to_ridge():
    covariates, responded, scores = small_case()
    separator = np.where(responded, 5.0, -5.0) + covariates["x"] * 0.1
    res = adjust_nps({"separator": separator}, responded, scores)
    assert res.fit == "ridge"
    assert any("ridge" in w for w in res.warnings)
    assert res.nps is not None and math.isfinite(res.nps)
    assert res.ci95 is not None and math.isfinite(res.ci95[0])
    json.dumps(res.to_dict(), allow_nan=False)


def test_input_validation():
    covariates, responded, scores = small_case()
    with pytest.raises(ValueError, match="shape"):
        adjust_nps({"x": covariates["x"][:-1]}, responded, scores)
    bad_scores = scores.copy()
    bad_scores[np.flatnonzero(responded)[0]] = np.nan
    with pytest.raises(ValueError, match="responder"):
        adjust_nps(covariates, responded, bad_scores)
    with_nan = covariates["x"].copy()
    with_nan[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        adjust_nps({"x": with_nan}, responded, scores)
    with pytest.raises(ValueError):
        adjust_nps(covariates, np.full(responded.size, 2), scores)
    mixed = np.array(["a", None] * (responded.size // 2), dtype=object)
    with pytest.raises(ValueError, match="level of their own"):
        adjust_nps({"mixed": mixed}, responded, scores)
