"""Non-response adjustment of NPS: propensity weighting, balance diagnostics, bounds.

Every invitee has covariates known whether or not they answered (channel, category, log order
value, repeat buyer, ...). The steps:

1. **Propensity model.** Logistic regression of ``responded`` on the covariates, unpenalised
   maximum likelihood by ``statsmodels`` (``sm.Logit``, Newton). Numeric columns enter as they
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

Scores of non-responders are ignored. All work is vectorised over rows.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from reports.stats.nps import DEFAULT_BANDS, Z95, NpsBands, json_float, json_pair

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]
Covariates = Mapping[str, npt.ArrayLike | Sequence[str] | Sequence[float]]

DEFAULT_PROPENSITY_FLOOR = 0.01
SMD_THRESHOLD = 0.1
RIDGE_ALPHA = 1e-4
MAX_STANDARDISED_COEF = 30.0
COLLINEAR_TOL = 1e-8


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class CovariateBalance:
    """Responders vs non-responders on one numeric column or one categorical level."""

    covariate: str
    smd: float
    flagged: bool
    smd_weighted: float

    def to_dict(self) -> dict[str, object]:
        """Keys: covariate, smd, flagged, smd_weighted (an infinite SMD becomes None)."""
        return {
            "covariate": self.covariate,
            "smd": json_float(self.smd),
            "flagged": self.flagged,
            "smd_weighted": json_float(self.smd_weighted),
        }


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

    def to_dict(self) -> dict[str, object]:
        """JSON-ready; keys: nps, raw_nps, ci95, se, n_eff, n_respondents, n_invited, smd, bounds,
        warnings, model_columns, fit, interval_method, propensity_floor, n_clipped, max_weight."""
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
        }


# --------------------------------------------------------------------------- covariates


@dataclass(frozen=True, slots=True)
class _Numeric:
    name: str
    values: FloatArray


@dataclass(frozen=True, slots=True)
class _Categorical:
    name: str
    levels: tuple[str, ...]
    codes: IntArray


def _parse_column(name: str, raw: object, n: int) -> _Numeric | _Categorical:
    arr = np.asarray(raw)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"covariate {name!r} has shape {arr.shape}, expected ({n},)")
    if arr.dtype.kind == "O":
        if all(isinstance(x, str) for x in arr):
            arr = arr.astype(str)
        else:
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"covariate {name!r} mixes strings with other values; encode missing "
                    "categories as a level of their own (e.g. 'unknown')"
                ) from exc
    if arr.dtype.kind in "US":
        levels, codes = np.unique(arr, return_inverse=True)
        return _Categorical(name, tuple(str(x) for x in levels), codes.astype(np.intp))
    if arr.dtype.kind in "biuf":
        values = arr.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"covariate {name!r} has NaN or infinite values; impute them first")
        return _Numeric(name, values)
    raise TypeError(f"covariate {name!r} has unsupported dtype {arr.dtype}")


def _smd(
    mean_r: float, mean_nr: float, var_r: float, var_nr: float, mean_w: float, mean_all: float
) -> tuple[float, float]:
    denom = math.sqrt((var_r + var_nr) / 2)
    if denom == 0:
        diff, diff_w = mean_r - mean_nr, mean_w - mean_all
        return (
            0.0 if diff == 0 else math.copysign(math.inf, diff),
            0.0 if diff_w == 0 else math.copysign(math.inf, diff_w),
        )
    return (mean_r - mean_nr) / denom, (mean_w - mean_all) / denom


def _balance(
    columns: Sequence[_Numeric | _Categorical], r: BoolArray, w: FloatArray, threshold: float
) -> tuple[CovariateBalance, ...]:
    """SMDs; ``w`` are the responders' weights (in row order of the responders)."""
    out: list[CovariateBalance] = []
    n_r, n_nr = int(r.sum()), int((~r).sum())
    if n_r == 0 or n_nr == 0:
        return ()
    for col in columns:
        if isinstance(col, _Numeric):
            x_r, x_nr = col.values[r], col.values[~r]
            pairs = [
                (
                    col.name,
                    float(x_r.mean()),
                    float(x_nr.mean()),
                    float(x_r.var()),
                    float(x_nr.var()),
                    float(np.dot(w, x_r) / w.sum()),
                    float(col.values.mean()),
                )
            ]
        else:
            k = len(col.levels)
            p_r = np.bincount(col.codes[r], minlength=k) / n_r
            p_nr = np.bincount(col.codes[~r], minlength=k) / n_nr
            p_w = np.bincount(col.codes[r], weights=w, minlength=k) / w.sum()
            p_all = np.bincount(col.codes, minlength=k) / r.size
            pairs = [
                (
                    f"{col.name}={level}",
                    float(p_r[j]),
                    float(p_nr[j]),
                    float(p_r[j] * (1 - p_r[j])),
                    float(p_nr[j] * (1 - p_nr[j])),
                    float(p_w[j]),
                    float(p_all[j]),
                )
                for j, level in enumerate(col.levels)
            ]
        for label, m_r, m_nr, v_r, v_nr, m_w, m_all in pairs:
            smd, smd_w = _smd(m_r, m_nr, v_r, v_nr, m_w, m_all)
            out.append(CovariateBalance(label, smd, abs(smd) > threshold, smd_w))
    return tuple(out)


# --------------------------------------------------------------------------- design matrix


def _design(
    columns: Sequence[_Numeric | _Categorical], r: BoolArray, notes: list[str]
) -> tuple[FloatArray, list[str]]:
    """Standardised design matrix with a leading intercept column, and the column names."""
    n = r.size
    specs: list[tuple[str, _Numeric | _Categorical, int]] = []  # (label, column, level or -1)
    for col in columns:
        if isinstance(col, _Numeric):
            if np.ptp(col.values) == 0:
                notes.append(f"covariate {col.name!r} is constant; left out of the model")
            else:
                specs.append((col.name, col, -1))
            continue
        if len(col.levels) == 1:
            notes.append(f"covariate {col.name!r} has a single level; left out of the model")
            continue
        total = np.bincount(col.codes, minlength=len(col.levels))
        answered = np.bincount(col.codes[r], minlength=len(col.levels))
        usable = [j for j in range(len(col.levels)) if 0 < answered[j] < total[j]]
        degenerate = [col.levels[j] for j in range(len(col.levels)) if j not in usable]
        if len(usable) < 2:
            notes.append(
                f"covariate {col.name!r}: fewer than two levels have both responders and "
                "non-responders (perfect separation); left out of the model"
            )
            continue
        reference = max(usable, key=lambda j: (total[j], -j))
        if degenerate:
            notes.append(
                f"covariate {col.name!r}: levels {degenerate} have no responders or only "
                f"responders (perfect separation); merged into reference level "
                f"{col.levels[reference]!r}"
            )
        specs.extend((f"{col.name}={col.levels[j]}", col, j) for j in usable if j != reference)

    x = np.empty((n, len(specs) + 1), order="F")
    x[:, 0] = 1.0
    for i, (_, col, level) in enumerate(specs, start=1):
        if isinstance(col, _Numeric):
            x[:, i] = col.values
        else:
            np.equal(col.codes, level, out=x[:, i], casting="unsafe")
        mean = x[:, i].mean()
        sd = x[:, i].std()
        x[:, i] -= mean
        x[:, i] /= sd
    names = [label for label, _, _ in specs]

    # Drop columns (almost) collinear with earlier ones: 1 - R^2 from the correlation matrix.
    if len(specs) > 1:
        corr = (x[:, 1:].T @ x[:, 1:]) / n
        keep: list[int] = []
        for j in range(len(specs)):
            resid = corr[j, j]
            if keep:
                b = corr[keep, j]
                resid -= float(b @ np.linalg.solve(corr[np.ix_(keep, keep)], b))
            if resid > COLLINEAR_TOL:
                keep.append(j)
            else:
                notes.append(f"model column {names[j]!r} is collinear with others; left out")
        if len(keep) < len(specs):
            x = x[:, [0, *(j + 1 for j in keep)]]
            names = [names[j] for j in keep]
    return x, names


# --------------------------------------------------------------------------- fitting


def _expit(eta: FloatArray) -> FloatArray:
    out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * eta))
    return out


def _fit(x: FloatArray, y: FloatArray, notes: list[str]) -> tuple[FloatArray, FloatArray, str]:
    """(params, penalty vector, fit kind) of the logistic propensity model."""
    # Imported here: statsmodels (with scipy and pandas) takes seconds to import, and only the
    # report needs it, not every process that imports this package.
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import (
        ConvergenceWarning,
        HessianInversionWarning,
        PerfectSeparationError,
        PerfectSeparationWarning,
    )

    zero = np.zeros(x.shape[1])
    problem: str | None = None
    params: Any = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # check_rank=False: _design already removed collinear columns (saves a QR of X).
            res = sm.Logit(y, x, check_rank=False).fit(method="newton", maxiter=100, disp=0)
            params = np.asarray(res.params, dtype=np.float64)
            if not res.mle_retvals.get("converged", False):
                problem = "the maximum-likelihood fit did not converge"
        except (np.linalg.LinAlgError, PerfectSeparationError, ValueError) as exc:
            problem = f"the maximum-likelihood fit failed ({exc.__class__.__name__}: {exc})"
    bad = (PerfectSeparationWarning, ConvergenceWarning, HessianInversionWarning, RuntimeWarning)
    messages = [str(w.message) for w in caught if issubclass(w.category, bad)]
    if problem is None and messages:
        problem = f"the maximum-likelihood fit warned ({messages[0]})"
    if problem is None and not (
        np.isfinite(params).all() and np.abs(params[1:]).max(initial=0) <= MAX_STANDARDISED_COEF
    ):
        problem = "the maximum-likelihood coefficients diverge (separation)"
    if problem is None:
        return np.asarray(params), zero, "logit"

    alpha = np.full(x.shape[1], RIDGE_ALPHA)
    alpha[0] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sm.GLM(y, x, family=sm.families.Binomial()).fit_regularized(alpha=alpha, L1_wt=0.0)
    notes.append(
        f"propensity model: {problem}; refitted with a ridge penalty alpha={RIDGE_ALPHA:g} on "
        "standardised coefficients (intercept unpenalised)"
    )
    return np.asarray(res.params, dtype=np.float64), alpha, "ridge"


# --------------------------------------------------------------------------- estimator


def adjust_nps(
    covariates: Covariates,
    responded: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    bands: NpsBands = DEFAULT_BANDS,
    propensity_floor: float = DEFAULT_PROPENSITY_FLOOR,
    smd_threshold: float = SMD_THRESHOLD,
) -> AdjustedNps:
    """Propensity-weighted (Hajek) NPS over all invitees, with the diagnostics of the module doc.

    ``covariates``: column name -> one value per invitee (strings: categorical; numbers or bools:
    numeric; no missing values). ``responded``: bool per invitee. ``scores``: 0-10 score per
    invitee (NaN or anything for non-responders; a responder's score must fall in a band).
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
    columns = [_parse_column(name, col, n) for name, col in covariates.items()]

    n_r = int(r.sum())
    n_nr = n - n_r
    notes: list[str] = []
    bounds = None
    if n:
        total_v = float(v.sum())
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
        )
    raw = float(v.mean())

    x: FloatArray | None = None
    alpha: FloatArray | None = None
    params: FloatArray | None = None
    names: list[str] = []
    if n_nr == 0:
        p = np.ones(n)
        fit = "none"
    else:
        x, names = _design(columns, r, notes)
        y = r.astype(np.float64)
        if x.shape[1] == 1:
            params = np.array([math.log(n_r / n_nr)])
            alpha = np.zeros(1)
            fit = "intercept"
        else:
            params, alpha, fit = _fit(x, y, notes)
        p = _expit(x @ params)

    p_r = p[r]
    clipped = p_r < propensity_floor
    n_clipped = int(clipped.sum())
    if n_clipped:
        notes.append(
            f"{n_clipped} responders had a propensity below {propensity_floor:g}; their "
            f"weights were capped at {1 / propensity_floor:g}"
        )
    w = 1.0 / np.maximum(p_r, propensity_floor)
    sum_w = float(w.sum())
    mu = float(np.dot(w, v) / sum_w)
    n_eff = sum_w**2 / float(np.dot(w, w))

    # Linearised variance (module docstring, step 4).
    a = sum_w / n
    psi_mu = w * (v - mu)
    infl = np.zeros(n)
    infl[r] = psi_mu
    if x is not None and params is not None and alpha is not None:
        dw = np.where(clipped, 0.0, (v - mu) * (1 - p_r) / p_r)
        h = x[r].T @ dw / n
        info = (x.T @ (x * (p * (1 - p))[:, None])) / n + np.diag(alpha)
        c = np.linalg.lstsq(info, h, rcond=None)[0]
        infl -= (r - p) * (x @ c) - float(np.dot(alpha * params, c))
    infl /= a
    se = math.sqrt(float(np.dot(infl, infl))) / n
    ci = (max(mu - Z95 * se, -100.0), min(mu + Z95 * se, 100.0))

    return AdjustedNps(
        nps=mu,
        raw_nps=raw,
        ci95=ci,
        se=se,
        n_eff=n_eff,
        n_respondents=n_r,
        n_invited=n,
        smd=_balance(columns, r, w, smd_threshold),
        bounds=bounds,
        warnings=tuple(notes),
        model_columns=tuple(names),
        fit=fit,
        propensity_floor=propensity_floor,
        n_clipped=n_clipped,
        max_weight=float(w.max()),
    )
