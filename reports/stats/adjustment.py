"""Non-response adjustment of NPS: propensity weighting, balance diagnostics, bounds.

Every invitee has covariates known whether or not they answered (channel, category, log order
value, repeat buyer, ...). The steps:

1. **Propensity model.** Logistic regression of ``responded`` on the covariates, unpenalised
   maximum likelihood by ``statsmodels`` (binomial ``GLM``, Newton). Numeric columns enter as they
   are; string columns are one-hot encoded with the most frequent level as reference. All model
   columns are standardised (mean 0, sd 1) before fitting, which leaves the fitted propensities
   unchanged and helps the conditioning. Problems are fixed, never hidden; each fix adds a line
   to ``warnings``:

   - a constant column, or a categorical with one level, is left out;
   - a categorical level whose invitees all answered, or none did, separates the data (its
     coefficient would run to +-infinity): it gets no column, i.e. it is merged into the
     reference level;
   - a column that is (almost) a linear combination of others (R^2 > 1 - 1e-8) is left out;
   - if the fit still fails (singular Hessian, separation on a numeric column, no convergence,
     a standardised coefficient above 30 in absolute value) the model is refitted with a tiny
     ridge penalty, ``GLM(...).fit_regularized(alpha=1e-4, L1_wt=0)`` on the standardised
     coefficients with the intercept unpenalised (objective -loglik/N + alpha/2 * |beta|^2).

2. **Weights.** w_i = 1 / max(p_i, floor) for responders, floor = 0.01 by default, so no
   responder stands for more than 100 invitees (a few extreme weights would otherwise dominate
   the estimate and its variance; the number clipped is reported).

3. **Hajek NPS.** NPS_w = sum(w v) / sum(w) over responders, v = +100 / 0 / -100.
   Kish effective sample size n_eff = (sum w)^2 / sum(w^2).

4. **Interval: linearisation (M-estimation sandwich).** The Hajek ratio and the logistic score
   equations are stacked, psi_mu = R w (v - mu), psi_beta = (R - p) x (- alpha * beta under the
   ridge), and the influence function of mu is

       IF_i = (psi_mu_i - h' I^{-1} psi_beta_i) / a,    a = mean(R w),
       h = mean(R (v - mu) (1 - p) / p x)  (zero for clipped weights, which do not move with beta)
       I = mean(p (1 - p) x x') (+ diag(alpha))

   Var(mu) = sum(IF^2) / N^2; ci95 = mu +/- 1.96 sqrt(Var), clipped to [-100, 100]. This counts
   the uncertainty of the estimated propensities (Lunceford & Davidian 2004, Stat. Med. 23,
   2937-2960) at the cost of two N x k matrix products, so it stays fast for millions of rows,
   where a bootstrap refitting the model would not.

5. **Balance.** Per numeric column and per categorical level (all levels), the standardised
   mean difference SMD = (mean_r - mean_nr) / sqrt((var_r + var_nr) / 2) (population variances;
   p(1 - p) for a level indicator), flagged when |SMD| > 0.1 (Austin 2009, Stat. Med. 28,
   3083-3107). ``smd_weighted`` = (weighted responder mean - mean of all invitees) / the same
   denominator shows what the weights leave unbalanced.

6. **Bounds** (Manski): the NPS over all invitees if every non-responder were a detractor
   (worst) or a promoter (best). They need no model and always contain the truth.

Scores of non-responders are ignored. All work is vectorised over rows. A row may stand for
several invitees with the same covariates, outcome and score (``counts``, frequency weights):
every sum above then counts it that many times, which gives the figures of the invitees one
by one from as many rows as there are distinct patterns. The covariates and
the balance live in :mod:`reports.stats.covariates`, the model fit in
:mod:`reports.stats.propensity`; this module weighs, estimates and bounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from reports.stats.covariates import (
    SMD_THRESHOLD,
    CovariateBalance,
    balance,
    design,
    parse_column,
)
from reports.stats.nps import DEFAULT_BANDS, Z95, NpsBands, json_float, json_pair
from reports.stats.propensity import expit, fit_propensity

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]
Covariates = Mapping[str, npt.ArrayLike | Sequence[str] | Sequence[float]]

DEFAULT_PROPENSITY_FLOOR = 0.01


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class NpsBounds:
    """NPS over all invitees if every non-responder were a detractor / a promoter."""

    worst: float
    best: float

    def to_dict(self) -> dict[str, float | None]:
        """Keys: worst, best."""
        return {"worst": json_float(self.worst), "best": json_float(self.best)}


@dataclass(frozen=True, slots=True)
class AdjustedNps:
    """Propensity-weighted NPS and its diagnostics (see the module docstring).

    ``fit`` is "logit" (unpenalised), "ridge" (fallback), "intercept" (no usable covariate),
    "none" (everyone or no one answered: nothing to model).
    """

    nps: float | None
    raw_nps: float | None
    ci95: tuple[float, float] | None
    se: float | None
    n_eff: float | None
    n_respondents: int
    n_invited: int
    smd: tuple[CovariateBalance, ...]
    bounds: NpsBounds | None
    warnings: tuple[str, ...]
    model_columns: tuple[str, ...]
    fit: str
    propensity_floor: float
    n_clipped: int
    max_weight: float | None
    model_rows: int = 0
    """Distinct rows (covariates, outcome, score) the invitees were fitted on."""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready; keys: nps, raw_nps, ci95, se, n_eff, n_respondents, n_invited, smd, bounds,
        warnings, model_columns, fit, interval_method, propensity_floor, n_clipped, max_weight,
        model_rows."""
        return {
            "nps": json_float(self.nps),
            "raw_nps": json_float(self.raw_nps),
            "ci95": json_pair(self.ci95),
            "se": json_float(self.se),
            "n_eff": json_float(self.n_eff),
            "n_respondents": self.n_respondents,
            "n_invited": self.n_invited,
            "smd": [b.to_dict() for b in self.smd],
            "bounds": None if self.bounds is None else self.bounds.to_dict(),
            "warnings": list(self.warnings),
            "model_columns": list(self.model_columns),
            "fit": self.fit,
            "interval_method": "linearised",
            "propensity_floor": self.propensity_floor,
            "n_clipped": self.n_clipped,
            "max_weight": json_float(self.max_weight),
            "model_rows": self.model_rows,
        }


# --------------------------------------------------------------------------- estimator


def adjust_nps(
    covariates: Covariates,
    responded: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    bands: NpsBands = DEFAULT_BANDS,
    propensity_floor: float = DEFAULT_PROPENSITY_FLOOR,
    smd_threshold: float = SMD_THRESHOLD,
    counts: npt.ArrayLike | None = None,
) -> AdjustedNps:
    """Propensity-weighted (Hajek) NPS over all invitees, with the diagnostics of the module doc.

    ``covariates``: column name -> one value per row (strings: categorical; numbers or bools:
    numeric; or a :class:`Categorical` / :class:`Numeric`; no missing values). ``responded``:
    bool per row. ``scores``: 0-10 score per row (NaN or anything for non-responders; a
    responder's score must fall in a band). ``counts``: invitees per row (positive integers;
    default one each).
    """
    r = np.asarray(responded)
    if r.ndim != 1:
        raise ValueError("responded must be one-dimensional")
    if r.dtype != np.bool_:
        if not np.isin(r, (0, 1)).all():
            raise ValueError("responded must be booleans (or 0/1)")
        r = r.astype(bool)
    n = int(r.size)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"scores has shape {s.shape}, expected ({n},)")
    if not 0 < propensity_floor <= 1:
        raise ValueError("propensity_floor must be in (0, 1]")
    v = bands.values(s[r])
    if np.isnan(v).any():
        raise ValueError("every responder needs a score inside an NPS band")
    if counts is None:
        c = np.ones(n)
    else:
        c = np.asarray(counts, dtype=np.float64)
        if c.shape != (n,) or not (c >= 1).all() or not (c == np.round(c)).all():
            raise ValueError(f"counts must be {n} positive integers")
    columns = [parse_column(name, col, n) for name, col in covariates.items()]

    rows = n
    c_r = c[r]
    n_r = int(c_r.sum())
    n = int(c.sum())
    n_nr = n - n_r
    notes: list[str] = []
    bounds = None
    if n:
        total_v = float(np.dot(c_r, v))
        bounds = NpsBounds((total_v - 100 * n_nr) / n, (total_v + 100 * n_nr) / n)
    if n_r == 0:
        notes.append("no responders: the NPS is undefined")
        return AdjustedNps(
            nps=None,
            raw_nps=None,
            ci95=None,
            se=None,
            n_eff=None,
            n_respondents=0,
            n_invited=n,
            smd=(),
            bounds=bounds,
            warnings=tuple(notes),
            model_columns=(),
            fit="none",
            propensity_floor=propensity_floor,
            n_clipped=0,
            max_weight=None,
            model_rows=rows,
        )
    raw = total_v / n_r

    x: FloatArray | None = None
    alpha: FloatArray | None = None
    params: FloatArray | None = None
    names: list[str] = []
    if n_nr == 0:
        p = np.ones(rows)
        fit = "none"
    else:
        x, names = design(columns, r, notes, c)
        y = r.astype(np.float64)
        if x.shape[1] == 1:
            params = np.array([math.log(n_r / n_nr)])
            alpha = np.zeros(1)
            fit = "intercept"
        else:
            params, alpha, fit = fit_propensity(x, y, notes, c)
        p = expit(x @ params)

    p_r = p[r]
    clipped = p_r < propensity_floor
    n_clipped = int(c_r[clipped].sum())
    if n_clipped:
        notes.append(
            f"{n_clipped} responders had a propensity below {propensity_floor:g}; their "
            f"weights were capped at {1 / propensity_floor:g}"
        )
    w = 1.0 / np.maximum(p_r, propensity_floor)
    cw = c_r * w
    sum_w = float(cw.sum())
    mu = float(np.dot(cw, v) / sum_w)
    n_eff = sum_w**2 / float(np.dot(cw, w))

    # Linearised variance (module docstring, step 4); one influence value per row, the same
    # for each invitee the row stands for.
    a = sum_w / n
    psi_mu = w * (v - mu)
    infl = np.zeros(rows)
    infl[r] = psi_mu
    if x is not None and params is not None and alpha is not None:
        dw = np.zeros(rows)
        dw[r] = np.where(clipped, 0.0, c_r * (v - mu) * (1 - p_r) / p_r)
        h = x.T @ dw / n
        info = (x.T @ (x * (c * p * (1 - p))[:, None])) / n + np.diag(alpha)
        sol = np.linalg.lstsq(info, h, rcond=None)[0]
        infl -= (r - p) * (x @ sol) - float(np.dot(alpha * params, sol))
    infl /= a
    se = math.sqrt(float(np.dot(c, infl * infl))) / n
    ci = (max(mu - Z95 * se, -100.0), min(mu + Z95 * se, 100.0))

    return AdjustedNps(
        nps=mu,
        raw_nps=raw,
        ci95=ci,
        se=se,
        n_eff=n_eff,
        n_respondents=n_r,
        n_invited=n,
        smd=balance(columns, r, w, smd_threshold, c),
        bounds=bounds,
        warnings=tuple(notes),
        model_columns=tuple(names),
        fit=fit,
        propensity_floor=propensity_floor,
        n_clipped=n_clipped,
        max_weight=float(w.max()),
        model_rows=rows,
    )
