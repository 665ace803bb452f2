"""Scores, paired differences and the verdicts built from them (notebooks 05, 08 and 09, every runner).

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

__all__ = ["interval", "sd", "paired", "last_k_mean", "claim_verdict", "premise_holds", "VERDICTS"]

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


def sd(values) -> float:
    """Sample standard deviation (ddof 1) over seeds; 0 for a single value. The spreads of the project's tables."""
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1)) if values.size > 1 else 0.0


def paired(mine, reference) -> dict:
    """The paired-difference record of a sweep row (`ofg_lib.sweep`; compare's and converge's tables still keep
    their own layouts of the same numbers, issue 19 item 8): per-seed values of a run
    and of its reference, same seeds in the same order. Keys: `mean`, `std` of `mine`; `reference`,
    `reference_std`; `difference`, `difference_std` and `per_seed` (mine - reference); and `interval`'s
    `low`, `high`, `ahead`, `behind`, `n`, `significant`. Spreads are ddof 1."""
    mine, reference = np.asarray(mine, dtype=float), np.asarray(reference, dtype=float)
    if mine.shape != reference.shape:
        raise ValueError(f"paired values need the same seeds: {mine.size} against {reference.size}")
    diff = mine - reference
    if np.all(np.isfinite(diff)):
        iv = interval(diff)
    else:   # a diverged run's NaN score stays in the table (its mean is NaN); no interval is claimed for it
        iv = {"low": None, "high": None, "ahead": int((diff > 0).sum()), "behind": int((diff < 0).sum()),
              "n": int(diff.size), "significant": None}
    return {"mean": float(mine.mean()), "std": sd(mine), "reference": float(reference.mean()),
            "reference_std": sd(reference), "difference": float(diff.mean()), "difference_std": sd(diff),
            "per_seed": diff.tolist(), **{k: iv[k] for k in ("low", "high", "ahead", "behind", "n", "significant")}}


def last_k_mean(history, upto_epoch, last_k: int, metrics) -> dict:
    """Each metric's mean over a run's last `last_k` validations up to `upto_epoch` (None where not logged)."""
    rows = [r for r in history if "val_dice" in r and r["epoch"] <= upto_epoch][-last_k:]
    return {m: float(np.mean([r[m] for r in rows])) if rows and rows[0].get(m) is not None else None
            for m in metrics}


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
