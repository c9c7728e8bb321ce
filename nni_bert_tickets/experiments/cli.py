"""The command-line driver behind ``examples/glue.py``, ``examples/squad.py`` and ``examples/mlm.py``."""
from __future__ import annotations

import json
import logging
from typing import Optional, Sequence

from . import nni_trial, tracking
from .config import parse_args
from .grid import dense_grid
from .imp_run import format_trajectory, imp_run_dir, run_imp
from .tables import EXPERIMENTS, save_imp

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None, description: str = "", default_task: Optional[str] = None):
    """Parse settings, run the chosen experiment, print its summary on the main process."""
    config = parse_args(argv, description=description, default_task=default_task)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trial = nni_trial.under_nni()
    if trial:
        config = nni_trial.with_nni_parameters(config)
    accelerator = tracking.make_accelerator(config.report_to, config.output_root)  # report_to: one run per unit
    if config.experiment == "imp":
        report = None
        if trial and accelerator.is_main_process:
            report = nni_trial.RoundReporter(imp_run_dir(config))  # a finished longer run, when run_imp reads one
        results = run_imp(config, accelerator, on_round=report)
        if report is not None:
            report.finish(results["trajectory"])
            nni_trial.report_final(results)
        if accelerator.is_main_process and not trial:  # NNI trials share output_root: NNI keeps their results
            save_imp(config, results)
        summary = f"IMP tickets for {config.task} ({results['run']}):\n{format_trajectory(results)}"
    else:
        results = {**EXPERIMENTS, "dense_grid": dense_grid}[config.experiment](config, accelerator)
        summary = (f"{config.experiment} done: {config.output_root}/tables/ "
                   f"(render with: python -m nni_bert_tickets.experiments.report {config.output_root})\n"
                   + json.dumps({k: results[k] for k in ("highest_winning_sparsity", "at_least_own_ticket")
                                 if k in results}))
    if accelerator.is_main_process:
        print("\n" + summary)  # the driver's output, not library logging
    return results
