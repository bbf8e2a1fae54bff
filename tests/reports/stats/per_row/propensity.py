"""The propensity model of the non-response adjustment (see :mod:`reports.stats.adjustment`):
logistic regression by maximum likelihood, with a ridge refit when the data separate or the fit
fails. statsmodels is imported inside, as only the report needs it."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]
RIDGE_ALPHA = 1e-4
MAX_STANDARDISED_COEF = 30.0


def expit(eta: FloatArray) -> FloatArray:
    out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * eta))
    return out


def fit_propensity(
    x: FloatArray, y: FloatArray, notes: list[str]
) -> tuple[FloatArray, FloatArray, str]:
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
            # check_rank=False: design already removed collinear columns (saves a QR of X).
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
