"""The IMP experiment on a GLUE task: one run directory per settings, resumable, never recomputed.

A run directory ``<output_root>/imp-<task>-<hash>/`` holds ``config.yaml`` (the resolved settings), ``log.txt``,
``imp/`` (each round's ticket, ``trajectory.json`` and the resume state) and, once finished, ``metrics.json``.
Once it is finished, ``keep`` bounds what stays in ``imp/``: ``all``; ``tickets`` (every round's ticket and the
trajectory: what Table 2, Table 3 and the transfer matrix read); ``final`` (the final ticket and the trajectory).

Round 0, the dense fine-tuning, is shared (:class:`~nni_bert_tickets.core.dense_round.DenseRound`) by every run
whose settings differ only in ``rewind`` and ``target_sparsity``: it lives in ``<output_root>/dense-<task>-<hash>/``
(:func:`dense_round_dir`) with the θi snapshots that Table 3's ``rewind_points`` ask for, and is trained by the first
run that needs it (or needs a snapshot it lacks).
Under early stopping round 0 may stop at a step that depends on the schedule, so it is not shared then.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import logging.handlers
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed

from . import tracking

from .config import ExperimentConfig, choices_of
from ..core.dense_round import DenseRound
from ..core.locks import unit_lock
from ..core.naming import unit_name
from ..tasks import get_task
from ..core.files import atomic_write, atomic_write_text, remove_stale_temporaries
from ..core.imp_state import BEFORE_LAST_FILE, STATE_FILE, THETA_I_FILE, ticket_file
from ..core.pruners import IMPPruner
from ..core.seeding import environment, record_environment
from ..core.targets import bert_config_list
from ..training.loop import FineTuner


__all__ = ["run_imp", "prepare", "format_trajectory", "tidy_finished", "imp_run_dir", "longer_run", "dense_round_dir"]
_log = logging.getLogger(__name__)
_KEEP = choices_of("keep")


def prepare(config: ExperimentConfig, accelerator: Optional[Accelerator] = None,
            checkpoint_dir: Optional[Path] = None):
    """Load tokenizer, data and model for ``config``; returns ``(model, FineTuner)``. Fails before training on
    an unknown task, unreadable path or missing column. ``checkpoint_dir``: where the FineTuner keeps its step
    checkpoint (with ``config.checkpoint_steps``)."""
    from transformers import AutoTokenizer

    task = get_task(config.task, config)
    data = task.load(config)
    if config.model and not _is_hub_id(config.model) and not os.path.isdir(config.model):
        raise FileNotFoundError(f"model path {config.model!r} is not a folder (nor a Hub id)")
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    tokenized = task.tokenize(data, tokenizer, config)
    set_seed(config.seed)  # the task head's initialisation
    model = task.load_model(config.model)
    tuner = FineTuner(task, tokenized, tokenizer, config.train_config(), accelerator,
                      None if checkpoint_dir is None else str(checkpoint_dir))
    if task.name == "mlm" and config.mlm_head_warmup_steps:
        from ..tasks.mlm import warm_up_head
        tuner.theta0 = warm_up_head(model, tuner, config, config.output_root)
        set_seed(config.seed)
    return model, tuner


def run_imp(config: ExperimentConfig, accelerator: Optional[Accelerator] = None,
            on_round=None) -> Dict[str, Any]:
    """Find tickets with IMP for ``config``; returns (and writes) the metrics per round. ``on_round`` is
    passed to :class:`IMPPruner` (called after each round that runs, not for rounds read back from disk)."""
    _check_keep(config.keep)  # not after hours of training
    accelerator = accelerator or tracking.make_accelerator(config.report_to, config.output_root)
    if config.report_to and not getattr(accelerator, "log_with", None):
        _log.warning("report_to %s is ignored: the Accelerator given has no trackers; build it with "
                     "nni_bert_tickets.experiments.tracking.make_accelerator(config.report_to, config.output_root)",
                     config.report_to)
    run_dir = Path(config.output_root) / config.run_name()
    finished = run_dir / "metrics.json"
    if finished.exists() and not last_ticket_lost(run_dir):
        _log.info("%s is finished already; nothing to do", run_dir)
        return _finished(run_dir, config, accelerator)
    longer = imp_run_dir(config)
    if longer != run_dir:  # IMP's first rounds do not depend on where it stops: read them, train nothing
        results = json.loads((longer / "metrics.json").read_text())
        trajectory = results["trajectory"][:len(config.levels())]
        _log.info("IMP on %s to %.0f%%: the first %d rounds of the finished run %s (same settings, target %.0f%%) "
                  "are this run's rounds; nothing to train", config.task, 100 * config.target_sparsity,
                  len(trajectory), longer.name, 100 * results["trajectory"][-1]["target_sparsity"])
        return {**results, "trajectory": trajectory, "run": longer.name, "reused_from": longer.name,
                "steps": sum(r.get("steps") or 0 for r in trajectory)}
    early = logging.handlers.MemoryHandler(capacity=10**6, flushLevel=logging.CRITICAL + 1)
    logging.getLogger().addHandler(early)  # what loading says reaches log.txt once the run dir exists
    try:
        model, tuner = prepare(config, accelerator, run_dir / "imp" / "step-checkpoint")  # bad input: no run dir
        # an architecture whose prunable set cannot be named is bad input too
        config_list = bert_config_list(model, config.target_sparsity, pooler=config.prune_pooler)
    finally:
        logging.getLogger().removeHandler(early)
    with unit_lock(run_dir, accelerator):  # one writer per run: another process may be training it
        if finished.exists() and not last_ticket_lost(run_dir):
            early.close()
            _log.info("%s was finished by another process; its results are reused", run_dir.name)
            return _finished(run_dir, config, accelerator)
        if finished.exists() and accelerator.is_main_process:
            _reopen_last_round(run_dir)
        accelerator.wait_for_everyone()
        return _train(config, accelerator, on_round, run_dir, model, tuner, config_list, early)


def _finished(run_dir: Path, config: ExperimentConfig, accelerator: Accelerator) -> Dict[str, Any]:
    results = json.loads((run_dir / "metrics.json").read_text())
    if accelerator.is_main_process:  # a tidy-up cut short, or a finished run now kept smaller
        tidy_finished(run_dir / "imp", config.keep, results["trajectory"])
    return results


def _train(config: ExperimentConfig, accelerator: Accelerator, on_round, run_dir: Path, model, tuner, config_list,
           early: logging.Handler) -> Dict[str, Any]:
    """The IMP run itself, in ``run_dir`` (which this process holds the lock of), logging to its ``log.txt``."""
    finished = run_dir / "metrics.json"
    handler = _log_to(run_dir / "log.txt", config.log_level) if accelerator.is_main_process else None
    if handler is not None:
        early.setTarget(handler)
        early.flush()
    early.close()
    _log.info("%s on %s", run_dir.name,
              record_environment(run_dir) if accelerator.is_main_process else environment())
    try:
        if accelerator.is_main_process:
            for folder in (run_dir, run_dir / "imp"):  # left by a run killed mid-write (SIGKILL); we hold the lock
                remove_stale_temporaries(folder)
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
        pruner = IMPPruner(model, config_list, tuner.evaluator(model),
                           schedule=config.schedule, step=config.step, rewind=config.rewind, head=config.head,
                           seed=config.seed, task=config.task, output_dir=str(run_dir / "imp"),
                           on_round=_tracked(accelerator, on_round), early_stop=config.early_stop(),
                           pattern=config.pattern, dense_round=_dense_round(config, accelerator),
                           ticket_meta={"theta0": tuner.theta0} if tuner.theta0 else None)
        with tracking.unit_run(accelerator, run_dir.name):
            pruner.compress()
        results = {"run": config.run_name(), "task": config.task, "model": config.model,
                   "metric": tuner.task.metric, "full_model": pruner.trajectory[0]["metric"],
                   "steps": sum(r.get("steps") or 0 for r in pruner.trajectory), "trajectory": pruner.trajectory}
        if accelerator.is_main_process:
            atomic_write_text(finished, json.dumps(results, indent=1, default=str))
            tidy_finished(run_dir / "imp", config.keep, pruner.trajectory)
        _log.info("IMP on %s finished: %s", config.task, finished)
        return results
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


def last_ticket_lost(run_dir: Path) -> bool:
    """Whether a finished θi run lacks its last ticket (θi and the last mask: as large as the model, it may not have
    travelled with the run) but kept the state before its last round, from which that round trains again."""
    if not (run_dir / "metrics.json").exists() or not (run_dir / "imp" / BEFORE_LAST_FILE).exists():
        return False
    last = json.loads((run_dir / "metrics.json").read_text())["trajectory"][-1]["round"]
    return not (run_dir / "imp" / ticket_file(last)).exists()


def _reopen_last_round(run_dir: Path) -> None:
    """Put the state before the last round back as the resume state and unfinish the run (its lock is held)."""
    imp_dir = run_dir / "imp"
    last = json.loads((run_dir / "metrics.json").read_text())["trajectory"][-1]
    _log.warning("%s is finished but its last ticket (%s, with θi) is gone: training round %d again from the state "
                 "before it (it scored %s)", run_dir.name, ticket_file(last["round"]), last["round"], last["metric"])
    atomic_write(imp_dir / STATE_FILE, lambda tmp: shutil.copyfile(imp_dir / BEFORE_LAST_FILE, tmp))
    (run_dir / "metrics.json").unlink()


def dense_round_dir(config: ExperimentConfig) -> Optional[Path]:
    """Where ``config``'s IMP round 0 is shared: ``<output_root>/dense-<task>-<hash>``, the hash of exactly what the
    round depends on (the run's settings less ``rewind``, ``target_sparsity`` and ``pattern``, which act only after
    it); None
    under early stopping, where round 0 may stop at a step that depends on the schedule and is not shared, and with
    ``share_dense_round: false``."""
    if config.early_stop_every or not config.share_dense_round:
        return None
    settings = {k: v for k, v in config.hashed().items() if k not in ("rewind", "target_sparsity", "pattern")}
    return Path(config.output_root) / unit_name(f"dense-{config.task}", settings)


def _dense_round(config: ExperimentConfig, accelerator: Accelerator) -> Optional[DenseRound]:
    """The shared round 0, asked for the run's own θi snapshot and, in Table 3 (``experiment: table3``), for those
    of its ``rewind_points`` too (other experiments never read them, and each is a full copy of the parameters)."""
    folder = dense_round_dir(config)
    points = [p for p in config.rewind_points if p] if config.experiment == "table3" else []
    return None if folder is None else DenseRound(folder, points, accelerator)


def imp_run_dir(config: ExperimentConfig) -> Path:
    """The directory of ``config``'s IMP run: its own, or else a finished run it is a prefix of (see
    :func:`longer_run`)."""
    own = Path(config.output_root) / config.run_name()
    return own if own.exists() else (longer_run(config) or own)


def longer_run(config: ExperimentConfig) -> Optional[Path]:
    """A finished IMP run under ``config.output_root`` with the same settings but a higher target, whose levels
    begin with all of ``config``'s and which kept the ticket of ``config``'s last level; or None.

    Each IMP round depends only on the rounds before it (it is seeded from the run seed and its round alone), never
    on where the run will stop, so such a run's first rounds are exactly the rounds ``config`` would train (Table
    3's θ0 row at the matching sparsity is then Table 2's IMP run, read back)."""
    levels = config.levels()
    for candidate in sorted(Path(config.output_root).glob(f"imp-{config.task}-*")):
        if not (candidate / "metrics.json").exists() or not (candidate / "config.yaml").exists():
            continue
        try:
            other = ExperimentConfig(**yaml.safe_load((candidate / "config.yaml").read_text()))
        except (TypeError, ValueError, yaml.YAMLError):
            continue
        if (other.target_sparsity <= config.target_sparsity
                or dataclasses.replace(other, target_sparsity=config.target_sparsity).hashed() != config.hashed()):
            continue
        done = json.loads((candidate / "metrics.json").read_text())["trajectory"]
        reached = [r["target_sparsity"] for r in done][:len(levels)]
        if len(reached) == len(levels) and all(abs(a - b) < 1e-9 for a, b in zip(reached, levels)) and \
                (candidate / "imp" / ticket_file(done[len(levels) - 1]["round"])).exists():
            return candidate
    return None


def tidy_finished(imp_dir: Path, keep: str, trajectory: List[Dict[str, Any]]) -> List[str]:
    """Delete what a finished IMP run (``metrics.json`` written) no longer needs; returns the names deleted.

    ``tickets`` and ``final`` delete the resume state (which only a run that is not finished reads) and any
    θi snapshot or step checkpoint left over; ``final`` also deletes every round's ticket but the last one (it
    carries a θi run's rewind weights) and the state before the last round (which needs the earlier tickets to
    train the last round again). ``trajectory.json`` stays. Idempotent: a rerun finishes a tidy-up cut short.
    """
    _check_keep(keep)
    if keep == "all" or not imp_dir.is_dir():
        return []
    doomed = [imp_dir / STATE_FILE, imp_dir / THETA_I_FILE, *sorted(imp_dir.glob("step-checkpoint*"))]
    if keep == "final":
        last = trajectory[-1]["round"]
        doomed += [imp_dir / BEFORE_LAST_FILE,
                   *(imp_dir / ticket_file(r["round"]) for r in trajectory if r["round"] != last)]
    deleted = []
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        deleted.append(path.name)
    if deleted:
        _log.info("%s is finished: deleted %s (keep: %s)", imp_dir.parent.name, ", ".join(deleted), keep)
    return deleted


def _check_keep(keep: str) -> None:
    if keep not in _KEEP:
        raise ValueError(f"keep must be one of {_KEEP} (what a finished run keeps on disk), got {keep!r}")


def _tracked(accelerator: Accelerator, on_round):
    """``on_round`` that first logs the level to the open tracker run (x = round)."""
    def report(record, ticket):
        values = {"metric": record["metric"], "sparsity": record["sparsity"], "steps": record.get("steps"),
                  **record["metrics"]}
        tracking.log_values(accelerator, "imp", values, step=record["round"])
        if on_round is not None:
            on_round(record, ticket)
    return report


def format_trajectory(results: Dict[str, Any]) -> str:
    """The per-round table: round, sparsity, the ticket's metric, the full model's metric."""
    name, full = results["metric"], results["full_model"]
    lines = [f"| round | sparsity | {name} | full model |", "|---:|---:|---:|---:|"]
    for r in results["trajectory"]:
        lines.append(f"| {r['round']} | {r['sparsity']:.1%} | {_num(r['metric'])} | {_num(full)} |")
    return "\n".join(lines)


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _is_hub_id(name: str) -> bool:
    return not name.startswith((".", "/", "~")) and name.count("/") <= 1 and not os.path.exists(name)


def _log_to(path: Path, level: str) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler

