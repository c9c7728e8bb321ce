"""The command-line driver behind ``examples/glue.py``, ``examples/squad.py`` and ``examples/mlm.py``."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import typing
from dataclasses import fields
from typing import Optional, Sequence

import yaml

from ..core.rewind import Rewind
from . import nni_trial, tracking
from .config import ExperimentConfig, load_yaml
from .hints import element_of, kind_of
from .grid import dense_grid
from .imp_run import format_trajectory, imp_run_dir, run_imp
from .tables import EXPERIMENTS, save_imp
from .train_ticket import train_ticket

__all__ = ["main", "parse_args"]


def parse_args(argv: Optional[Sequence[str]] = None, description: str = "",
               default_task: Optional[str] = None) -> ExperimentConfig:
    """Build the CLI from the dataclass, apply ``--config`` then explicit flags, and validate.
    ``default_task`` replaces the ``task`` default (``examples/squad.py`` defaults to ``squad``)."""
    hints = typing.get_type_hints(ExperimentConfig)
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of settings (flags given here override it)")
    for f in fields(ExperimentConfig):
        kind = kind_of(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = f.metadata.get("choices")
        if isinstance(default, list):
            shown = " ".join(map(str, default)) or "none"
        else:
            shown = "{}" if default == {} else default
        text = f.metadata["help"] + ("" if default is None else f" (default: {shown})")  # the help says what unset is
        if choices and element_of(hints[f.name]) is not None:
            text += f"; any of: {', '.join(choices)}"
        text = text.replace("%", "%%")
        if element_of(hints[f.name]) is not None:
            parser.add_argument(flag, nargs="+", type=element_of(hints[f.name]), default=None, help=text,
                                metavar="NAME" if choices else None)
        elif kind is bool:
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None, help=text,
                                metavar="{true,false}")
        elif kind is dict or typing.get_origin(kind) is dict:
            parser.add_argument(flag, type=yaml.safe_load, default=None, help=text, metavar="YAML")
        elif f.name == "rewind":
            parser.add_argument(flag, type=Rewind.from_text, default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(flag, type=kind, default=None, help=text, choices=choices)
    args = vars(parser.parse_args(argv))
    values = {"task": default_task} if default_task else {}
    values.update(load_yaml(args.pop("config")) if args.get("config") else {})
    args.pop("config", None)
    values.update({k: v for k, v in args.items() if v is not None or k == "rewind"})
    return ExperimentConfig(**values).validate()


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
    elif config.experiment == "ticket":
        results = train_ticket(config, accelerator)
        runs, card = results["runs"], results["card"]
        summary = (f"{config.ticket} ({results['sparsity']:.1%} sparse) trained on {config.task}: {results['metric']} "
                   f"{runs['mean']:.4f}" + (f" ± {runs['std']:.4f}" if runs["std"] is not None else "")
                   + f" over {runs['n']} seed(s)"
                   + (f"; its card says {card['value']}" if card.get("value") is not None else ""))
    else:
        results = {**EXPERIMENTS, "dense_grid": dense_grid}[config.experiment](config, accelerator)
        summary = (f"{config.experiment} done: {config.output_root}/tables/ "
                   f"(render with: python -m nni_bert_tickets.experiments.report {config.output_root})\n"
                   + json.dumps({k: results[k] for k in ("highest_winning_sparsity", "at_least_own_ticket")
                                 if k in results}))
    if accelerator.is_main_process:
        print("\n" + summary)  # the driver's output, not library logging
    return results
