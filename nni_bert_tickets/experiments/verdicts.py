"""The paper's verdicts, kept in one place so the tables and the report cannot disagree.

*Matching* (a winning ticket): a subnetwork's metric within one standard deviation of the full model's mean over
seeds. In Figure 3 a transferred ticket is *at least as good as the target's own ticket* when it scores within one
standard deviation (of the target's full model) below the target's own ticket; a source matching on every target
is *universal*.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["within_one_std", "matching", "transfer_verdicts"]
_EPS = 1e-9  # a metric exactly on the threshold counts, float noise aside


def within_one_std(metric: Optional[float], reference: float, std: float) -> bool:
    """``metric`` is no more than ``std`` below ``reference`` (``None``, a missing run, never is)."""
    return metric is not None and metric >= reference - std - _EPS


def matching(metric: Optional[float], full: Mapping[str, Any]) -> bool:
    """Within one standard deviation of the full model's mean (``full`` holds ``mean`` and ``std``)."""
    return within_one_std(metric, full["mean"], full.get("std", 0.0))


def transfer_verdicts(matrix: Mapping[str, Mapping[str, float]], full: Mapping[str, Mapping[str, Any]],
                      targets: Sequence[str], sources: Sequence[str]) -> Tuple[Dict[str, List[str]],
                                                                                Dict[str, List[str]]]:
    """Per source: the targets (not its own task) where it is at least as good as the target's own ticket (the
    diagonal ``matrix[t][t]``), and the targets where it is matching."""
    at_least_own = {s: [t for t in targets if t != s and
                        within_one_std(matrix[s][t], matrix[t][t], full[t].get("std", 0.0))] for s in sources}
    matched = {s: [t for t in targets if matching(matrix[s][t], full[t])] for s in sources}
    return at_least_own, matched
