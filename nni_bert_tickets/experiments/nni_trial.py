"""Running as a trial of an NNI experiment (``nnictl create --config examples/nni/*.yml``).

Under NNI the tuner's parameters (any :class:`~nni_bert_tickets.experiments.config.ExperimentConfig` fields) override the
config; each IMP round is reported once with ``nni.report_intermediate_result`` (:func:`round_reporter`, also
when a killed run is resumed) and the ticket at the target sparsity with ``nni.report_final_result``. Outside an
experiment nothing changes, so the same command runs standalone.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Dict, Optional

import nni

from .config import ExperimentConfig
from ..core.files import atomic_write_text

__all__ = ["under_nni", "with_nni_parameters", "report_round", "round_reporter", "report_final", "REPORTED"]
_log = logging.getLogger(__name__)
REPORTED = "nni-reported-rounds.json"  # in the run directory: the IMP rounds already reported to NNI


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
    """One IMP round as an intermediate result (``default`` = the task's main metric)."""
    nni.report_intermediate_result({"default": record["metric"], "sparsity": record["sparsity"],
                                    "round": record["round"]})


def round_reporter(run_dir: str | os.PathLike, report: Optional[Callable[..., None]] = None):
    """An ``on_round`` for :class:`~nni_bert_tickets.IMPPruner` that reports each round of the run in ``run_dir``
    once (with ``report``, default :func:`report_round`).

    A kill after a round is reported but before its state is saved makes the resumed run train that round
    again; the rounds already reported are kept in ``<run_dir>/nni-reported-rounds.json`` (written right after
    each report), so the rerun is not reported a second time.
    """
    path, report = os.path.join(os.fspath(run_dir), REPORTED), report or report_round

    def on_round(record: Dict[str, Any], ticket=None) -> None:
        done = set()
        if os.path.exists(path):
            try:
                with open(path) as f:
                    done = set(json.load(f))
            except (OSError, ValueError, TypeError) as err:
                raise ValueError(f"{path} is unreadable ({err}); delete it to report the coming rounds "
                                 "again") from err
        if record["round"] in done:
            _log.info("IMP round %d was reported to NNI before the run was interrupted; not reporting it again",
                      record["round"])
            return
        report(record, ticket)
        atomic_write_text(path, json.dumps(sorted(done | {record["round"]})))
    return on_round


def report_final(results: Dict[str, Any]) -> None:
    """The ticket at the target sparsity as the final result, with the full model's metric beside it."""
    last = results["trajectory"][-1]
    nni.report_final_result({"default": last["metric"], "sparsity": last["sparsity"],
                             "full_model": results["full_model"]})
