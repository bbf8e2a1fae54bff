"""The propensity model of the non-response adjustment (see :mod:`reports.stats.adjustment`):
logistic regression by maximum likelihood, with a ridge refit when the data separate or the fit
fails. statsmodels is imported inside, as only the report needs it.

The rows carry frequency weights (``counts``, invitees per row). When rows were merged, the
model is statsmodels' binomial ``GLM`` with ``freq_weights``, which maximises the likelihood of
the invitees one by one from as many rows as there are distinct patterns; when every row is one
invitee (continuous covariates rarely repeat), it is ``Logit``, the same likelihood without the
GLM's bookkeeping (a rank check and extra passes over the rows). Either way Newton-Raphson runs
until no coefficient moves by more than 1e-8, i.e. to the maximum-likelihood estimate to about
1e-16; over many rows it starts from a fit on an evenly spaced subsample, which saves passes
over the data without moving the estimate.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]
RIDGE_ALPHA = 1e-4
MAX_STANDARDISED_COEF = 30.0
WARM_START_ROWS = 100_000
"""Above this many rows the Newton iterations start from a fit on a subsample."""
SUBSAMPLE_ROWS = 20_000


def expit(eta: FloatArray) -> FloatArray:
    out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * eta))
    return out


def _newton(x: FloatArray, y: FloatArray, counts: FloatArray, start: FloatArray) -> Any:
    """One maximum-likelihood fit (statsmodels results); raises or warns as statsmodels does."""
    import statsmodels.api as sm

    if (counts == 1).all():
        # check_rank=False: design already removed collinear columns (saves a QR of X).
        return sm.Logit(y, x, check_rank=False).fit(
            start_params=start, method="newton", maxiter=100, disp=0
        )
    model = sm.GLM(y, x, family=sm.families.Binomial(), freq_weights=counts)
    return model.fit(start_params=start, method="newton", maxiter=100, max_start_irls=0, disp=0)


def _start(x: FloatArray, y: FloatArray, counts: FloatArray) -> FloatArray:
    """Where Newton starts: the intercept-only solution, or over many rows the fit on every
    k-th row (when that fit works; any trouble there is ignored, the full fit decides)."""
    n = float(counts.sum())
    n_r = float(np.dot(counts, y))
    start = np.zeros(x.shape[1])
    start[0] = math.log(n_r / (n - n_r))
    rows = x.shape[0]
    if rows <= WARM_START_ROWS:
        return start
    every = slice(None, None, rows // SUBSAMPLE_ROWS)
    sub_y = y[every]
    if sub_y.min() == sub_y.max():
        return start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = _newton(np.asfortranarray(x[every]), sub_y, counts[every], start)
        except (np.linalg.LinAlgError, ValueError, ArithmeticError):
            return start
    params = np.asarray(res.params, dtype=np.float64)
    converged = bool(res.mle_retvals.get("converged", False))
    if not converged or not np.isfinite(params).all():
        return start
    if np.abs(params[1:]).max(initial=0) > MAX_STANDARDISED_COEF:
        return start
    return params


def fit_propensity(
    x: FloatArray, y: FloatArray, notes: list[str], counts: FloatArray
) -> tuple[FloatArray, FloatArray, str]:
    """(params, penalty vector, fit kind) of the logistic propensity model.

    ``x``: the standardised design with its intercept column; ``y``: 1 for responders;
    ``counts``: invitees per row. Ridge: the penalised log-likelihood
    -loglik/N + alpha/2 |beta|^2 over the N invitees.
    """
    # Imported here: statsmodels (with scipy and pandas) takes seconds to import, and only the
    # report needs it, not every process that imports this package.
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import (
        ConvergenceWarning,
        HessianInversionWarning,
        PerfectSeparationError,
        PerfectSeparationWarning,
    )

    n = float(counts.sum())
    zero = np.zeros(x.shape[1])
    problem: str | None = None
    params: Any = None
    start = _start(x, y, counts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = _newton(x, y, counts, start)
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
    ridge = sm.GLM(y, x, family=sm.families.Binomial(), freq_weights=counts)
    # statsmodels' ridge objective divides the log-likelihood by ``nobs``, the number of rows;
    # with the number of invitees it is the per-invitee objective, and the search takes the
    # same steps as over the invitees one by one.
    ridge.nobs = n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ridge.fit_regularized(alpha=alpha, L1_wt=0.0)
    notes.append(
        f"propensity model: {problem}; refitted with a ridge penalty alpha={RIDGE_ALPHA:g} on "
        "standardised coefficients (intercept unpenalised)"
    )
    return np.asarray(res.params, dtype=np.float64), alpha, "ridge"
