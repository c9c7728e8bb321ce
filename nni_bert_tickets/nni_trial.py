"""Running as a trial of an NNI experiment (``nnictl create --config examples/nni/*.yml``).

Under NNI the tuner's parameters (any :class:`~nni_bert_tickets.config.ExperimentConfig` fields) override the
config; each IMP round is reported with ``nni.report_intermediate_result`` and the ticket at the target sparsity
with ``nni.report_final_result``. Outside an experiment nothing changes, so the same command runs standalone.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict

import nni

from .config import ExperimentConfig

__all__ = ["under_nni", "with_nni_parameters", "report_round", "report_final"]
_log = logging.getLogger(__name__)


def under_nni() -> bool:
    return nni.get_experiment_id() != "STANDALONE"


def with_nni_parameters(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with the tuner's parameters for this trial applied (checked like any other setting)."""
    params = dict(nni.get_next_parameter() or {})
    known = {f.name for f in dataclasses.fields(ExperimentConfig)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"the NNI search space names unknown settings {unknown}; known: {sorted(known)}")
    _log.info("NNI trial %s parameters: %s", nni.get_trial_id(), params)
    return dataclasses.replace(config, **params).validate()


def report_round(record: Dict[str, Any], _ticket=None) -> None:
    """One IMP round as an intermediate result (``default`` = the task's main metric); an early-stopped search
    round has no metric and is not reported."""
    if record["metric"] is None:
        return
    nni.report_intermediate_result({"default": record["metric"], "sparsity": record["sparsity"],
                                    "round": record["round"]})


def report_final(results: Dict[str, Any]) -> None:
    """The ticket at the target sparsity as the final result, with the full model's metric beside it."""
    last = results["trajectory"][-1]
    nni.report_final_result({"default": last["metric"], "sparsity": last["sparsity"],
                             "full_model": results["full_model"]})
