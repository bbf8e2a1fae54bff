"""The covariates of the non-response adjustment (see :mod:`reports.stats.adjustment`): columns
parsed into numeric or one-hot categorical form, the balance diagnostics (standardised mean
differences) and the standardised design matrix the propensity model is fitted on."""

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
    columns: Sequence[Numeric | Categorical], r: BoolArray, w: FloatArray, threshold: float
) -> tuple[CovariateBalance, ...]:
    """SMDs; ``w`` are the responders' weights (in row order of the responders)."""
    out: list[CovariateBalance] = []
    n_r, n_nr = int(r.sum()), int((~r).sum())
    if n_r == 0 or n_nr == 0:
        return ()
    for col in columns:
        if isinstance(col, Numeric):
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
            smd, smd_w = standardised_mean_difference(m_r, m_nr, v_r, v_nr, m_w, m_all)
            out.append(CovariateBalance(label, smd, abs(smd) > threshold, smd_w))
    return tuple(out)


# --------------------------------------------------------------------------- design matrix


def design(
    columns: Sequence[Numeric | Categorical], r: BoolArray, notes: list[str]
) -> tuple[FloatArray, list[str]]:
    """Standardised design matrix with a leading intercept column, and the column names."""
    n = r.size
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
        if isinstance(col, Numeric):
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
