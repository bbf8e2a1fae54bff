"""The covariates of the non-response adjustment (see :mod:`reports.stats.adjustment`): columns
parsed into numeric or one-hot categorical form, the balance diagnostics (standardised mean
differences) and the standardised design matrix the propensity model is fitted on.

Every function takes ``counts``, a frequency weight per row: a row stands for ``counts[i]``
invitees with the same covariates, outcome and score. Means, variances, level shares and the
design's standardisation are the frequency-weighted ones, so grouped rows give the figures of
the invitees one by one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from reports.stats.nps import json_float

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]
SMD_THRESHOLD = 0.1
COLLINEAR_TOL = 1e-8


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
class Numeric:
    name: str
    values: FloatArray


@dataclass(frozen=True, slots=True)
class Categorical:
    name: str
    levels: tuple[str, ...]
    codes: IntArray


def parse_column(name: str, raw: object, n: int) -> Numeric | Categorical:
    """One covariate: strings are categorical, numbers numeric; a :class:`Categorical` or
    :class:`Numeric` is taken as it is (a categorical's levels not used by any row dropped)."""
    if isinstance(raw, Numeric | Categorical):
        size = raw.values.shape[0] if isinstance(raw, Numeric) else raw.codes.shape[0]
        if size != n:
            raise ValueError(f"covariate {name!r} has shape ({size},), expected ({n},)")
        if isinstance(raw, Numeric):
            return parse_column(name, raw.values, n)
        return _compact(Categorical(name, raw.levels, raw.codes))
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
        return Categorical(name, tuple(str(x) for x in levels), codes.astype(np.intp))
    if arr.dtype.kind in "biuf":
        values = arr.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"covariate {name!r} has NaN or infinite values; impute them first")
        return Numeric(name, values)
    raise TypeError(f"covariate {name!r} has unsupported dtype {arr.dtype}")


def _compact(col: Categorical) -> Categorical:
    """The same column without the levels no row has (levels stay in their order)."""
    used = np.bincount(col.codes, minlength=len(col.levels)) > 0
    if used.all():
        return col
    new_code = np.cumsum(used) - 1
    levels = tuple(level for level, keep in zip(col.levels, used, strict=True) if keep)
    return Categorical(col.name, levels, new_code[col.codes].astype(np.intp))


def _shares(codes: IntArray, weights: FloatArray, k: int) -> FloatArray:
    """Weighted share of each level; a level holding every row has exactly 1."""
    sums = np.bincount(codes, weights=weights, minlength=k)
    shares: FloatArray = sums / sums.sum()
    return shares


def weighted_mean_var(x: FloatArray, c: FloatArray | None) -> tuple[float, float]:
    """Frequency-weighted mean and population variance (``c`` None: one invitee per row;
    exactly the value and 0 when every row has the same value)."""
    if x.size and x.min() == x.max():
        return float(x[0]), 0.0
    if c is None:
        return float(x.mean()), float(x.var())
    total = float(c.sum())
    mean = float(np.dot(c, x)) / total
    dev = x - mean
    return mean, float(np.dot(c, dev * dev)) / total


def standardised_mean_difference(
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


def balance(
    columns: Sequence[Numeric | Categorical],
    r: BoolArray,
    w: FloatArray,
    threshold: float,
    counts: FloatArray,
) -> tuple[CovariateBalance, ...]:
    """SMDs; ``w`` are the responders' weights (in row order of the responders), ``counts``
    the rows' frequency weights."""
    out: list[CovariateBalance] = []
    c_r, c_nr = counts[r], counts[~r]
    n_r, n_nr = float(c_r.sum()), float(c_nr.sum())
    if n_r == 0 or n_nr == 0:
        return ()
    cw = c_r * w
    ones = bool((counts == 1).all())
    for col in columns:
        if isinstance(col, Numeric):
            x_r, x_nr = col.values[r], col.values[~r]
            m_r, v_r = weighted_mean_var(x_r, None if ones else c_r)
            m_nr, v_nr = weighted_mean_var(x_nr, None if ones else c_nr)
            m_w = weighted_mean_var(x_r, cw)[0]
            m_all = weighted_mean_var(col.values, None if ones else counts)[0]
            pairs = [(col.name, m_r, m_nr, v_r, v_nr, m_w, m_all)]
        else:
            k = len(col.levels)
            p_r = _shares(col.codes[r], c_r, k)
            p_nr = _shares(col.codes[~r], c_nr, k)
            p_w = _shares(col.codes[r], cw, k)
            p_all = _shares(col.codes, counts, k)
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
            smd, smd_w = standardised_mean_difference(m_r, m_nr, v_r, v_nr, m_w, m_all)
            out.append(CovariateBalance(label, smd, abs(smd) > threshold, smd_w))
    return tuple(out)


# --------------------------------------------------------------------------- design matrix


def design(
    columns: Sequence[Numeric | Categorical], r: BoolArray, notes: list[str], counts: FloatArray
) -> tuple[FloatArray, list[str]]:
    """Standardised design matrix with a leading intercept column, and the column names
    (columns standardised with the frequency-weighted mean and standard deviation)."""
    n = float(counts.sum())
    specs: list[tuple[str, Numeric | Categorical, int]] = []  # (label, column, level or -1)
    for col in columns:
        if isinstance(col, Numeric):
            if np.ptp(col.values) == 0:
                notes.append(f"covariate {col.name!r} is constant; left out of the model")
            else:
                specs.append((col.name, col, -1))
            continue
        if len(col.levels) == 1:
            notes.append(f"covariate {col.name!r} has a single level; left out of the model")
            continue
        total = np.bincount(col.codes, weights=counts, minlength=len(col.levels))
        answered = np.bincount(col.codes[r], weights=counts[r], minlength=len(col.levels))
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

    ones = bool((counts == 1).all())
    x = np.empty((r.size, len(specs) + 1), order="F")
    x[:, 0] = 1.0
    for i, (_, col, level) in enumerate(specs, start=1):
        if isinstance(col, Numeric):
            x[:, i] = col.values
            mean, var = weighted_mean_var(x[:, i], None if ones else counts)
        else:
            np.equal(col.codes, level, out=x[:, i], casting="unsafe")
            mean = float(np.bincount(col.codes, weights=counts, minlength=level + 1)[level]) / n
            var = mean * (1 - mean)
        x[:, i] -= mean
        x[:, i] /= math.sqrt(var)
    names = [label for label, _, _ in specs]

    # Drop columns (almost) collinear with earlier ones: 1 - R^2 from the correlation matrix.
    if len(specs) > 1:
        z = x[:, 1:]
        corr = (z.T @ (z if ones else z * counts[:, None])) / n
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
