"""Running as a trial of an NNI experiment (``nnictl create --config examples/nni/*.yml``).

Under NNI the tuner's parameters (any :class:`~nni_bert_tickets.experiments.config.ExperimentConfig` fields)
override the config, and ``$NNI_BERT_TICKETS_OUTPUT_ROOT``, when set, says where the sweep's runs go
(``output_root``: where, never what, so a sweep can write elsewhere without editing its YAML). Every IMP round is
reported with ``nni.report_intermediate_result``, once per trial and in order (:class:`RoundReporter`): rounds
read back from an earlier run (finished or interrupted) are reported too, so a trial's intermediate results are
its whole IMP trajectory, and a round reported before a kill is not reported again when the trial resumes. The
ticket at the target sparsity is the final result. Outside an experiment nothing changes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import nni

from .config import ExperimentConfig
from ..core.files import atomic_write_text

__all__ = ["OUTPUT_ROOT_ENV", "under_nni", "with_nni_parameters", "report_round", "RoundReporter", "report_final",
           "REPORTED"]
_log = logging.getLogger(__name__)
OUTPUT_ROOT_ENV = "NNI_BERT_TICKETS_OUTPUT_ROOT"
REPORTED = "nni-reported-rounds.json"  # in the run directory: {trial id: the IMP rounds it reported}


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
    """One IMP round as an intermediate result (``default`` = the task's main metric); an early-stopped search
    round has no metric and is not reported."""
    if record["metric"] is None:
        return
    nni.report_intermediate_result({"default": record["metric"], "sparsity": record["sparsity"],
                                    "round": record["round"]})


class RoundReporter:
    """``on_round`` for :func:`~nni_bert_tickets.experiments.imp_run.run_imp`: every round of the run in
    ``run_dir`` reported once per trial, in order (with ``report``, default :func:`report_round`).

    A resumed run trains only its later rounds: before the first of them, the rounds read back from the run's
    ``imp/trajectory.json`` are reported; :meth:`finish` reports what is left (all rounds of a run that was
    finished already, when ``run_imp`` trains nothing). The rounds a trial reported are kept in
    ``<run_dir>/nni-reported-rounds.json`` right after each report, so a kill between a round's report and its
    saved state does not make the resumed trial report that round twice; another trial reusing the run reports
    its whole trajectory.
    """

    def __init__(self, run_dir: str | os.PathLike, trial: Optional[str] = None,
                 report: Optional[Callable[..., None]] = None):
        self.run_dir, self.trial = Path(run_dir), trial or nni.get_trial_id()
        self.report = report or report_round
        self.record_file = self.run_dir / REPORTED
        self.done = set(self._records().get(self.trial, []))

    def __call__(self, record: Dict[str, Any], ticket=None) -> None:
        for earlier in self._saved()[:record["round"]]:
            self._once(earlier)
        self._once(record, ticket)

    def finish(self, trajectory: List[Dict[str, Any]]) -> None:
        for record in trajectory:
            self._once(record)

    def _once(self, record: Dict[str, Any], ticket=None) -> None:
        if record["round"] in self.done:
            return
        self.report(record, ticket)
        self.done.add(record["round"])
        records = {**self._records(), self.trial: sorted(self.done)}
        atomic_write_text(self.record_file, json.dumps(records, sort_keys=True))

    def _records(self) -> Dict[str, List[int]]:
        if not self.record_file.exists():
            return {}
        try:
            records = json.loads(self.record_file.read_text())
            if not isinstance(records, dict):
                raise TypeError("not a mapping of trial ids to rounds")
            return records
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"{self.record_file} is unreadable ({err}); delete it to report the rounds "
                             "again") from err

    def _saved(self) -> List[Dict[str, Any]]:
        path = self.run_dir / "imp" / "trajectory.json"
        try:
            return json.loads(path.read_text()) if path.exists() else []
        except (OSError, ValueError) as err:
            _log.warning("cannot read the resumed rounds from %s: %s", path, err)
            return []


def report_final(results: Dict[str, Any]) -> None:
    """The ticket at the target sparsity as the final result, with the full model's metric beside it."""
    last = results["trajectory"][-1]
    nni.report_final_result({"default": last["metric"], "sparsity": last["sparsity"],
                             "full_model": results["full_model"]})
