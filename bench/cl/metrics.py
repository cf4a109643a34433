"""Continual-learning summaries of an accuracy matrix, and their mean and spread over seeds.

R[i][j] is the score on domain j's test set after training on domains 0..i; b[j] is the score of the
randomly initialised model on domain j. With T = last row (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018):

    ACC  = mean_j R[T][j]
    BWT  = mean_{j<T} (R[T][j] - R[j][j])         negative = forgetting
    FWT  = mean_{j>0} (R[j-1][j] - b[j])          what earlier domains taught about the next one
    max forgetting = max_{j<T} (max_{i<T} R[i][j] - R[T][j])
    old  = mean_{j<T} R[T][j]                     the last row over the domains trained earlier
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

Matrix = Sequence[Sequence[float]]


def acc(R: Matrix) -> float:
    return statistics.fmean(R[-1])


def bwt(R: Matrix) -> float:
    last = len(R) - 1
    return statistics.fmean(R[last][j] - R[j][j] for j in range(last)) if last else 0.0


def fwt(R: Matrix, baseline: Sequence[float]) -> float:
    n = len(R)
    return statistics.fmean(R[j - 1][j] - baseline[j] for j in range(1, n)) if n > 1 else 0.0


def max_forgetting(R: Matrix) -> float:
    last = len(R) - 1
    if not last:
        return 0.0
    return max(max(R[i][j] for i in range(last)) - R[last][j] for j in range(last))


def old_domains(R: Matrix) -> float:
    """Mean of the last row over every domain but the last: how much of the past survived."""
    last = len(R) - 1
    return statistics.fmean(R[last][:last]) if last else float("nan")


def seen_so_far(R: Matrix) -> list[float]:
    """After each domain i, the mean score over domains 0..i (the curve in the plot)."""
    return [statistics.fmean(R[i][: i + 1]) for i in range(len(R))]


def old_so_far(R: Matrix) -> list[float]:
    """After each domain i >= 1, the mean score over the earlier domains 0..i-1 (nan for i = 0)."""
    return [float("nan")] + [statistics.fmean(R[i][:i]) for i in range(1, len(R))]


def summarise(R: Matrix, baseline: Sequence[float]) -> dict[str, float]:
    return {
        "acc": acc(R),
        "bwt": bwt(R),
        "fwt": fwt(R, baseline),
        "max_forgetting": max_forgetting(R),
        "old_domains": old_domains(R),
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value), ignoring nans."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return float("nan"), float("nan")
    return statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else 0.0


def interval95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (Student's t, n - 1 degrees of freedom);
    nan half-width for a single value, which has no interval."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return float("nan"), float("nan")
    if len(kept) == 1:
        return kept[0], float("nan")
    from scipy.stats import t

    half = float(t.ppf(0.975, len(kept) - 1)) * statistics.stdev(kept) / math.sqrt(len(kept))
    return statistics.fmean(kept), half


def mean_matrix(matrices: Sequence[Matrix]) -> list[list[float]]:
    """Element-wise mean of same-shape matrices."""
    rows, cols = len(matrices[0]), len(matrices[0][0])
    return [[statistics.fmean(m[i][j] for m in matrices) for j in range(cols)] for i in range(rows)]
