"""Paired differences and the verdicts built from them (notebooks 08 and 09, `ofg_lib.converge`).

    interval([0.004, 0.009, 0.004])            # mean, 95 % t interval (ddof 1), sign count
    claim_verdict(per_seed, premise=...)       # "holds" / "contradicted" / "unresolved" / "not testable here"

A claim of the paper's ablations says that a change *costs* Dice against full OFG (the change minus OFG is
negative). Its verdict is computed from the paired per-seed differences: **holds** when the 95 % t interval lies
below 0, **contradicted** when it lies above 0, **unresolved** otherwise (with three seeds an interval is wide:
t(0.975, 2) = 4.30). Claims that trade OFG's guidance for the unsupervised loss (less frequent guidance, a
share of L_sim, an unsupervised warm-up) presuppose that full OFG beats unsupervised training in that setting:
where that **premise** is not established (its own interval does not lie above 0), each such change only
moves a run toward the better baseline, and the verdict is **not testable here**.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["interval", "claim_verdict", "premise_holds", "VERDICTS"]

VERDICTS = ("holds", "contradicted", "unresolved", "not testable here")


def interval(diffs, level: float = 0.95) -> dict:
    """Mean of paired differences, its `level` t interval (ddof 1), the std (ddof 1) and the sign count.

    With one value the interval and std are undefined (None). `significant`: the interval excludes 0.
    """
    from scipy import stats
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n == 0:
        raise ValueError("no paired differences")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"paired differences must be finite, got {d.tolist()}")
    mean = float(d.mean())
    base = {"mean": mean, "n": n, "ahead": int((d > 0).sum()), "behind": int((d < 0).sum())}
    if n < 2:
        return {**base, "low": None, "high": None, "std": None, "significant": None}
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))
    return {**base, "low": mean - half, "high": mean + half, "std": sd,
            "significant": bool(mean - half > 0 or mean + half < 0)}


def premise_holds(ofg_minus_unsupervised) -> bool:
    """Whether full OFG beats unsupervised training: the interval of OFG - unsupervised lies above 0."""
    iv = interval(ofg_minus_unsupervised)
    return iv["low"] is not None and iv["low"] > 0


def claim_verdict(change_minus_ofg, needs_premise: bool = False, premise: bool | None = None) -> dict:
    """The verdict on "this change costs Dice against full OFG" from its paired per-seed differences.

    `needs_premise`: the change leans on the unsupervised loss, so the claim is testable only where full OFG
    beats unsupervised training (`premise`, from `premise_holds`).
    """
    iv = interval(change_minus_ofg)
    if needs_premise and not premise:
        verdict = "not testable here"
    elif iv["high"] is not None and iv["high"] < 0:
        verdict = "holds"
    elif iv["low"] is not None and iv["low"] > 0:
        verdict = "contradicted"
    else:
        verdict = "unresolved"
    return {**iv, "verdict": verdict}
