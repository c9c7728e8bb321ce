"""The paper's verdicts, kept in one place so the tables and the report cannot disagree.

*Matching* (a winning ticket): a subnetwork's metric (its mean over seeds, where it has several) within one sample
standard deviation of the full model's mean over seeds (the paper's Table 2); *strictly matching*: at least the full
model's mean (the paper's appendix). In Figure 3 a transferred ticket is *at least as good as the target's own
ticket* when it scores within one standard deviation (of the target's full model) below the target's own ticket; a
source matching on every target is *universal*.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["within_one_std", "matching", "strictly_matching", "stats", "decisive_levels", "highest",
           "highest_contiguous", "row_answers", "settle", "probe", "PROBE_ORDERS", "is_down_set", "lead_interval",
           "lead_at", "transfer_verdicts"]
PROBE_ORDERS = ("all", "top_down", "bisect")
_EPS = 1e-9  # a metric exactly on the threshold counts, float noise aside


def within_one_std(metric: Optional[float], reference: float, std: float) -> bool:
    """``metric`` is no more than ``std`` below ``reference`` (``None``, a missing run, never is)."""
    return metric is not None and metric >= reference - std - _EPS


def matching(metric: Optional[float], full: Mapping[str, Any]) -> bool:
    """Within one standard deviation of the full model's mean (``full`` holds ``mean`` and ``std``)."""
    return within_one_std(metric, full["mean"], full.get("std") or 0.0)


def strictly_matching(metric: Optional[float], full: Mapping[str, Any]) -> bool:
    """At least the full model's mean (the paper's stricter criterion, from its appendix)."""
    return metric is not None and metric >= full["mean"] - _EPS


def stats(runs: Sequence[float]) -> Dict[str, Any]:
    """``runs`` with their mean, sample standard deviation (None for a single run) and count."""
    return {"runs": list(runs), "mean": statistics.fmean(runs),
            "std": statistics.stdev(runs) if len(runs) > 1 else None, "n": len(runs)}


def highest(runs: Mapping[float, Sequence[float]], full: Mapping[str, Any], strict: bool = False) -> Optional[float]:
    """The highest level whose mean over its runs is matching (``strict``: strictly), or None."""
    test = strictly_matching if strict else matching
    passed = [level for level, r in runs.items() if test(statistics.fmean(r), full)]
    return max(passed) if passed else None


def highest_contiguous(passed: Mapping[float, bool]) -> Optional[float]:
    """The highest level that matches with every level below it matching too (``passed``: level -> verdict), or
    None when the lowest level fails: the answer a single lucky run above a failing level cannot raise."""
    top = None
    for level in sorted(passed):
        if not passed[level]:
            break
        top = level
    return top


def row_answers(rows: Sequence[Mapping[str, Any]], full: Mapping[str, Any], top: Optional[float]) -> Dict[str, Any]:
    """Table 2's answers that follow from its rows (each with ``sparsity``, ``imp``: the mean, and ``matching``) and
    ``top``, the highest matching level: the highest strictly matching level, whether every level up to ``top``
    matches, and the highest level with every level below it matching."""
    return {"highest_strictly_matching_sparsity": max(
                (r["sparsity"] for r in rows if strictly_matching(r["imp"], full)), default=None),
            "matching_up_to_highest": top is not None and all(r["matching"] for r in rows
                                                              if r["sparsity"] <= top + 1e-9),
            "highest_contiguous_matching_sparsity": highest_contiguous({r["sparsity"]: r["matching"] for r in rows})}


def decisive_levels(runs: Mapping[float, Sequence[float]], full: Mapping[str, Any]) -> List[float]:
    """The levels that decide Table 2's answers, from the runs so far: under each criterion the highest matching
    level and the level above it (the lowest level where none matches). Training more seeds there can move an
    answer; the caller repeats until every decisive level has its seeds, so a verdict that flips is followed."""
    levels = sorted(runs)
    out = set()
    for strict in (False, True):
        top = highest(runs, full, strict)
        if top is None:
            out.add(levels[0])
            continue
        out.add(top)
        above = [level for level in levels if level > top + 1e-9]
        if above:
            out.add(above[0])
    return sorted(out)


def settle(runs: Dict[float, List[float]], full: Mapping[str, Any], k: int,
           train: Callable[[float, int], float]) -> Dict[float, List[float]]:
    """Give every decisive level ``k`` runs (``train(level, i)`` is the level's ``i``-th run), re-deciding after
    each pass, until the decisive levels stop moving. ``runs`` holds each level's runs so far (at least one)."""
    while True:
        short = [level for level in decisive_levels(runs, full) if len(runs[level]) < k]
        if not short:
            return runs
        for level in short:
            runs[level] += [train(level, i) for i in range(len(runs[level]), k)]


def probe(levels: Sequence[float], full: Mapping[str, Any], k: int, train: Callable[[float, int], float],
          order: str = "all", runs: Optional[Dict[float, List[float]]] = None) -> Dict[float, List[float]]:
    """Train only the levels Table 2's answers need, then :func:`settle` them: the returned runs hold the levels
    that were trained (``train(level, i)``, at least one run each) and nothing for the others.

    ``all`` trains every level (the paper). ``top_down`` walks from the highest level down, one run each, until a
    level matches, then on until one strictly matches: the answer is the highest matching level *by its
    definition*, with no assumption about the trajectory; it saves the levels below the strict answer.
    ``bisect`` assumes that matching is a down-set (every level below a matching level matches) and halves the
    interval between the highest level known to match and the lowest known not to, once per criterion: about
    log2(levels) runs, but where the assumption fails (a dip below the threshold under the answer) it can stop
    below the true answer. Either way the level above each answer is trained (it closed the search), and settle
    gives the decisive levels ``k`` runs and follows an answer that moves. ``runs`` may hold runs already made
    (e.g. rounds whose own metric is a verdict), which are used before any training.
    """
    if order not in PROBE_ORDERS:
        raise ValueError(f"order is one of {PROBE_ORDERS}, got {order!r}")
    levels = sorted(levels)
    runs = {level: list(r) for level, r in (runs or {}).items() if r}

    def mean_of(level: float) -> float:
        if level not in runs:
            runs[level] = [train(level, 0)]
        return statistics.fmean(runs[level])

    def search() -> None:
        if order == "all":
            for level in levels:
                mean_of(level)
        for test in (matching, strictly_matching) if order != "all" else ():
            if order == "top_down":
                for level in reversed(levels):
                    if test(mean_of(level), full):
                        break
            else:  # bisect: levels[:lo + 1] are taken to match, levels[hi:] not to
                lo, hi = -1, len(levels)
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (mid, hi) if test(mean_of(levels[mid]), full) else (lo, mid)

    while True:  # more seeds can move an answer past the levels trained so far: search again until nothing moves
        before = {level: len(r) for level, r in runs.items()}
        search()
        settle(runs, full, k, train)
        if {level: len(r) for level, r in runs.items()} == before:
            return runs


def is_down_set(passed: Mapping[float, bool]) -> bool:
    """Whether the levels that pass are exactly the levels up to the highest one that passes (``bisect``'s
    assumption about a trajectory)."""
    levels = sorted(passed)
    top = max((level for level in levels if passed[level]), default=None)
    return all(passed[level] == (top is not None and level <= top) for level in levels)


def lead_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Dict[str, Any]:
    """mean(a) − mean(b) with Welch's ``confidence`` interval over the seeds (None bounds with a single run on
    either side), and whether the interval excludes zero."""
    from scipy import stats as st
    lead = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return {"lead": lead, "low": None, "high": None, "excludes_zero": None, "n": [len(a), len(b)]}
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        low = high = lead
    else:
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
        half = st.t.ppf(0.5 + confidence / 2, df) * se
        low, high = lead - half, lead + half
    return {"lead": lead, "low": float(low), "high": float(high), "excludes_zero": bool(low > 0 or high < 0),
            "n": [len(a), len(b)],
            "confidence": confidence}


def lead_at(rows: Sequence[Mapping[str, Any]], top: Optional[float],
            baselines: Sequence[str]) -> Optional[Dict[str, Any]]:
    """IMP minus the best baseline (by mean) at the highest matching level ``top``, with :func:`lead_interval` over
    the row's stored runs (``<kind>_stats``); a row stored before runs were kept counts as one run each (no
    interval). None where no baseline ran at that level."""
    row = next((r for r in rows if top is not None and abs(r["sparsity"] - top) < 1e-6), None)
    kinds = [kind for kind in baselines if row is not None and row.get(kind) is not None]
    if not kinds:
        return None
    best = max(kinds, key=lambda kind: row[kind])

    def runs(key: str) -> List[float]:
        return list((row.get(f"{key}_stats") or {}).get("runs") or [row[key]])

    return {"sparsity": top, "baseline": best, **lead_interval(runs("imp"), runs(best))}


def transfer_verdicts(matrix: Mapping[str, Mapping[str, float]], full: Mapping[str, Mapping[str, Any]],
                      targets: Sequence[str], sources: Sequence[str]) -> Tuple[Dict[str, List[str]],
                                                                                Dict[str, List[str]]]:
    """Per source: the targets (not its own task) where it is at least as good as the target's own ticket (the
    diagonal ``matrix[t][t]``), and the targets where it is matching."""
    at_least_own = {s: [t for t in targets if t != s and
                        within_one_std(matrix[s][t], matrix[t][t], full[t].get("std") or 0.0)] for s in sources}
    matched = {s: [t for t in targets if matching(matrix[s][t], full[t])] for s in sources}
    return at_least_own, matched
