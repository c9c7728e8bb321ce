"""Running as a trial of an NNI experiment (``nnictl create --config examples/nni/*.yml``).

Under NNI the tuner's parameters (any :class:`~nni_bert_tickets.config.ExperimentConfig` fields) override the
config, and ``$NNI_BERT_TICKETS_OUTPUT_ROOT``, when set, says where the sweep's runs go (``output_root``: where,
never what, so a sweep can write elsewhere without editing its YAML). Each IMP round is reported with
``nni.report_intermediate_result`` and the ticket at the target sparsity with ``nni.report_final_result``;
rounds read back from an earlier run (finished or interrupted) are reported too, in order, so every trial's
intermediate results are its whole IMP trajectory. Outside an experiment nothing changes, so the same command
runs standalone.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List

import nni

from .config import ExperimentConfig

__all__ = ["OUTPUT_ROOT_ENV", "under_nni", "with_nni_parameters", "report_round", "report_final", "RoundReporter"]
OUTPUT_ROOT_ENV = "NNI_BERT_TICKETS_OUTPUT_ROOT"
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
    root = os.environ.get(OUTPUT_ROOT_ENV)
    if root is not None:
        if not root.strip():
            raise ValueError(f"{OUTPUT_ROOT_ENV} is set but empty; unset it or name a folder for the sweep's runs")
        _log.info("runs go to %s (%s) instead of %s", root, OUTPUT_ROOT_ENV, config.output_root)
        params["output_root"] = root
    return dataclasses.replace(config, **params).validate()


def report_round(record: Dict[str, Any], _ticket=None) -> None:
    """One IMP round as an intermediate result (``default`` = the task's main metric)."""
    nni.report_intermediate_result({"default": record["metric"], "sparsity": record["sparsity"],
                                    "round": record["round"]})


class RoundReporter:
    """``on_round`` for :func:`~nni_bert_tickets.experiment.run_imp` that reports every round once and in order.

    A resumed run trains only its later rounds: before the first of them, the rounds it read back from
    ``trajectory_file`` (the run's ``imp/trajectory.json``) are reported. :meth:`finish` reports what is left,
    e.g. all rounds of a run that was finished already (``run_imp`` then trains nothing)."""

    def __init__(self, trajectory_file):
        self.trajectory_file = Path(trajectory_file)
        self.next_round = 0

    def __call__(self, record: Dict[str, Any], _ticket=None) -> None:
        if record["round"] > self.next_round:
            self._report(self._saved()[self.next_round:record["round"]])
        if record["round"] != self.next_round:
            _log.warning("IMP rounds %d to %d were not found in %s; they are missing from the intermediate "
                         "results", self.next_round, record["round"] - 1, self.trajectory_file)
        report_round(record)
        self.next_round = record["round"] + 1

    def finish(self, trajectory: List[Dict[str, Any]]) -> None:
        self._report(trajectory[self.next_round:])

    def _saved(self) -> List[Dict[str, Any]]:
        try:
            return json.loads(self.trajectory_file.read_text())
        except (OSError, ValueError) as err:
            _log.warning("cannot read the resumed rounds from %s: %s", self.trajectory_file, err)
            return []

    def _report(self, records: List[Dict[str, Any]]) -> None:
        for record in records:
            if record["round"] == self.next_round:
                report_round(record)
                self.next_round += 1


def report_final(results: Dict[str, Any]) -> None:
    """The ticket at the target sparsity as the final result, with the full model's metric beside it."""
    last = results["trajectory"][-1]
    nni.report_final_result({"default": last["metric"], "sparsity": last["sparsity"],
                             "full_model": results["full_model"]})
