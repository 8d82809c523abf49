"""Confidence intervals that stay honest at a handful of seeds.

With n = 3 seeds a bootstrap interval is far too narrow (it resamples three numbers, so it never
sees more spread than they show), while Student's t with the Welch-Satterthwaite degrees of
freedom widens for small n as it should. Every interval the report, `compare`, the claims table
and the figures' error bars print comes from here.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

LEVEL = 0.95
NAME = "Welch's t interval (95 %, Welch-Satterthwaite degrees of freedom)"
PAIRED_NAME = "paired t interval (95 %, n - 1 degrees of freedom, over the per-seed values of the contrast)"


def welch(a, b):
    """(t, degrees of freedom, two-sided p) of Welch's unequal-variance t-test, or None when a side
    has one value or neither side varies."""
    from scipy import stats  # heavy (~3 s to import here): only confidence intervals need it

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return None
    with warnings.catch_warnings():  # one side without spread (3 equal seeds) is fine for Welch's test
        warnings.simplefilter("ignore", RuntimeWarning)
        r = stats.ttest_ind(a, b, equal_var=False)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))  # Welch-Satterthwaite
    return float(r.statistic), float(df), float(r.pvalue)


def contrast_ci(groups, weights, level: float = LEVEL):
    """Interval of sum_i w_i * mean(groups[i]) for independent groups of seeds: (estimate, low, high).

    Student's t with Welch-Satterthwaite degrees of freedom; for two groups with weights (1, -1)
    it is exactly the interval of Welch's t-test. None when a group has fewer than two values.
    Without any spread the interval is the estimate itself."""
    from scipy import stats  # heavy (~3 s to import here): only confidence intervals need it

    groups = [np.asarray(g, float) for g in groups]
    if any(len(g) < 2 for g in groups):
        return None
    est = float(sum(w * g.mean() for w, g in zip(weights, groups)))
    parts = [w * w * g.var(ddof=1) / len(g) for w, g in zip(weights, groups)]
    var = sum(parts)
    if var == 0:
        return est, est, est
    df = var ** 2 / sum(p ** 2 / (len(g) - 1) for p, g in zip(parts, groups) if p > 0)
    half = float(stats.t.ppf((1 + level) / 2, df)) * math.sqrt(var)
    return est, est - half, est + half


def diff_ci(a, b, level: float = LEVEL):
    """(low, high) of mean(a) - mean(b) (Welch), or None when a side has one value."""
    out = contrast_ci([a, b], [1.0, -1.0], level)
    return None if out is None else out[1:]


def halfwidth(std, n, level: float = LEVEL):
    """Half-width of the t interval of a mean from its sample std and n (arrays work): 0 for n < 2."""
    from scipy import stats  # heavy (~3 s to import here): only confidence intervals need it

    std, n = np.nan_to_num(np.asarray(std, float)), np.asarray(n, float)
    t = stats.t.ppf((1 + level) / 2, np.maximum(n - 1, 1))
    return np.where(n > 1, t * std / np.sqrt(np.maximum(n, 1)), 0.0)


def mean_halfwidth(values, level: float = LEVEL) -> float:
    """Half-width of the t interval of the mean of `values` (NaNs ignored): 0 for a single value."""
    v = np.asarray([x for x in values if x == x], float)
    return float(halfwidth(v.std(ddof=1) if len(v) > 1 else 0.0, len(v), level))


def paired_contrast_ci(by_seed, weights, level: float = LEVEL):
    """Interval of sum_i w_i * x_i over seeds, from per-term {seed: value} dicts that hold the same
    seeds: Student's t over the per-seed contrasts, n - 1 degrees of freedom; (estimate, low, high).
    None when the terms' seeds differ or fewer than two are shared."""
    from scipy import stats  # heavy (~3 s to import here): only confidence intervals need it

    seeds = set(by_seed[0]) if by_seed else set()
    if any(set(d) != seeds for d in by_seed) or len(seeds) < 2:
        return None
    per_seed = np.array([sum(w * d[s] for w, d in zip(weights, by_seed)) for s in sorted(seeds)], float)
    est = float(per_seed.mean())
    sd = float(per_seed.std(ddof=1))
    if sd == 0:
        return est, est, est
    half = float(stats.t.ppf((1 + level) / 2, len(per_seed) - 1)) * sd / math.sqrt(len(per_seed))
    return est, est - half, est + half


def best_ci(by_seed, weights, paired: bool = True, level: float = LEVEL):
    """(estimate, low, high, name): the paired interval when `paired` and every term holds the same
    seeds, else Welch's over the terms' values; None when neither has two values a term."""
    if paired:
        out = paired_contrast_ci(by_seed, weights, level)
        if out is not None:
            return (*out, PAIRED_NAME)
    out = contrast_ci([[d[s] for s in sorted(d)] for d in by_seed], weights, level)
    return None if out is None else (*out, NAME)
