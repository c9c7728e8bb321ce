"""The paper's Table 2, Table 3 and Figure 3 as compositions of cached runs.

Every unit of work — a full-model fine-tuning, an IMP run, one baseline at one sparsity, one transfer — is a
run directory named by a hash of exactly the settings it depends on, so a finished unit is never recomputed
and is shared by every table that needs it: one IMP run gives the tickets at every level, the baselines reuse
its masks, and the full-model runs serve Table 2, Table 3 and the transfer matrix alike.
Results land in ``<output_root>/tables/<experiment>-<name>.json``; ``nni_bert_tickets.experiments.report`` renders them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from accelerate import Accelerator
from accelerate.utils import set_seed

from ..core.baselines import check_layer_shuffle, one_shot_magnitude_ticket, random_ticket
from ..core.baseline_pruners import ReinitPruner, ShuffledPruner, mask_config_list
from .config import ExperimentConfig, load_yaml, unit_name
from .imp_run import imp_run_dir, last_ticket_lost, prepare, run_imp
from ..core.locks import free_first, unit_lock
from ..core.files import atomic_write_text
from ..core.imp_state import ticket_file
from ..core.seeding import environment, record_environment
from ..core.targets import prunable_modules
from ..tasks import get_task
from ..core.ticket import Ticket
from .tracking import log_values, unit_run
from .verdicts import (highest, lead_at, matching, probe, row_answers, stats, strictly_matching,
                       transfer_verdicts)

__all__ = ["cached", "full_model", "imp_ticket", "ticket_at", "baseline", "table2", "table3", "transfer", "check_model",
           "every_metric", "save_imp", "EXPERIMENTS"]
_log = logging.getLogger(__name__)


def cached(root: Path, kind: str, settings: Dict[str, Any], compute: Callable[[Path], Dict[str, Any]],
           accelerator: Optional[Accelerator] = None) -> Dict[str, Any]:
    """Run ``compute(run_dir)`` once per distinct ``settings``; later calls read ``result.json``. A process that
    finds the unit being computed by another waits for it and reuses its result (:mod:`.locks`)."""
    run_dir = Path(root) / unit_name(kind, settings)
    result = run_dir / "result.json"
    if result.exists():
        return json.loads(result.read_text())
    with unit_lock(run_dir, accelerator):  # one writer per unit: another process may be computing it
        if result.exists():
            _log.info("%s was finished by another process; its result is reused", run_dir.name)
            return json.loads(result.read_text())
        main = accelerator is None or accelerator.is_main_process
        if main:
            atomic_write_text(run_dir / "settings.json", json.dumps(settings, indent=1, sort_keys=True, default=str))
        _log.info("running %s on %s", run_dir.name, record_environment(run_dir) if main else environment())
        with unit_run(accelerator, run_dir.name):  # with report_to: this unit's tracker run
            value = compute(run_dir)
            log_values(accelerator, "eval", value)
        if main:
            atomic_write_text(result, json.dumps(value, indent=1, default=str))
        return value


def full_model(config: ExperimentConfig, seed: int, accelerator: Optional[Accelerator] = None) -> Dict[str, Any]:
    """Fine-tune the dense pre-trained model once with ``seed``."""
    seeded = dataclasses.replace(config, seed=seed)

    def compute(run_dir):
        model, tuner = prepare(seeded, accelerator, run_dir / "step-checkpoint")
        set_seed(seed)
        return tuner.fit(model)
    return cached(Path(config.output_root), f"full-{config.task}", {**config.training_settings(), "seed": seed},
                  compute, accelerator)


def imp_ticket(config: ExperimentConfig, sparsity: float) -> Ticket:
    """The ticket at ``sparsity`` from the IMP run of ``config`` (which must have passed that level)."""
    return ticket_at(imp_run_dir(config), sparsity)


def ticket_at(run_dir: Path, sparsity: float) -> Ticket:
    """The ticket at ``sparsity`` from the IMP run in ``run_dir``, with a θi run's rewind weights."""
    run_dir = Path(run_dir)
    trajectory = json.loads((run_dir / "imp" / "trajectory.json").read_text())
    for record in trajectory:
        if abs(record["target_sparsity"] - sparsity) < 1e-6:
            ticket = Ticket.load(_kept(run_dir, record["round"]))
            if ticket.rewind and ticket.rewind.startswith("theta_i") and ticket.weights is None:
                # θi rewind weights are stored once, in the final ticket's file
                ticket.weights = Ticket.load(_kept(run_dir, trajectory[-1]["round"])).weights
            return ticket
    levels = [r["target_sparsity"] for r in trajectory]
    raise ValueError(f"the IMP run {run_dir.name} has no level {sparsity}; it passed {levels}")


def _kept(run_dir: Path, round_: int) -> Path:
    """A round's ticket file; if a finished run lacks it, say why it may be gone and what to do."""
    path = run_dir / "imp" / ticket_file(round_)
    if path.exists() or not (run_dir / "metrics.json").exists():
        return path
    if last_ticket_lost(run_dir):
        raise FileNotFoundError(f"{path} is gone: the θi run {run_dir.name} was copied without its last ticket (θi, "
                                "as large as the model); run it again (run_imp, or the experiment) to train its last "
                                "round again from the state it kept before it")
    raise FileNotFoundError(
        f"{path} is gone, though the IMP run {run_dir.name} is finished: it was kept with keep: final (only the "
        "last round's ticket), or the run folder was copied without it; delete the run folder and rerun it "
        "(keep: tickets keeps every level)")


# The Table-2 baselines as small strategies: each makes a model and the ticket to apply on it, from θ0 (the freshly
# loaded model) and the IMP run of ``config``. They return (ticket, load_weights): whether a θi ticket's rewind
# weights are copied in (θ0′ and θ0″ keep their own weights).
def _imp_fresh_head(model, config, sparsity, seed):      # the IMP mask itself, from θ0 with a fresh head
    return imp_ticket(config, sparsity), True


def _random_pruning(model, config, sparsity, seed):      # a random mask at the same sparsity
    return random_ticket(imp_ticket(config, sparsity), seed=seed), True


def _random_reinit(model, config, sparsity, seed):       # θ0′: the IMP mask on freshly initialised weights
    ticket = imp_ticket(config, sparsity)
    _on_own_weights(ReinitPruner(model, mask_config_list(model, ticket), mask=ticket, seed=seed))
    return ticket, False


def _shuffled(model, config, sparsity, seed):            # θ0″: the IMP mask on shuffled pre-trained weights
    ticket = imp_ticket(config, sparsity)
    _on_own_weights(ShuffledPruner(model, mask_config_list(model, ticket), mask=ticket, seed=seed,
                                   mode=config.shuffle_mode))
    return ticket, False


def _on_own_weights(pruner) -> None:               # the pruner draws the weights; the ticket is applied for training
    pruner.compress()
    pruner.unwrap_model()


def _oneshot(model, config, sparsity, seed):             # one-shot magnitude pruning of θ0 (no IMP run needed)
    return one_shot_magnitude_ticket(model, sparsity, pooler=config.prune_pooler, pattern=config.pattern), True


BASELINES = {"random_pruning": _random_pruning, "random_reinit": _random_reinit, "shuffled": _shuffled,
             "oneshot": _oneshot, "imp_fresh_head": _imp_fresh_head}


def baseline(config: ExperimentConfig, kind: str, sparsity: float, accelerator: Optional[Accelerator] = None,
             seed: Optional[int] = None) -> Dict[str, Any]:
    """One Table-2 baseline (a strategy of :data:`BASELINES`) at one sparsity, fine-tuned from its starting point
    with a fresh head. ``imp_fresh_head`` retrains the IMP ticket itself from θ0 with a fresh head. ``seed``
    (default ``config.seed``) draws the baseline's randomness and the training's; the IMP run stays ``config``'s."""
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; known: {', '.join(BASELINES)}")
    seed = config.seed if seed is None else seed
    settings = {**config.training_settings(), "seed": seed, "kind": kind, "sparsity": sparsity,
                "imp_run": None if kind == "oneshot" else config.run_name(),  # one-shot needs no IMP run
                "shuffle_mode": config.shuffle_mode if kind == "shuffled" else None,
                **({"prune_pooler": config.prune_pooler} if config.prune_pooler is not None else {}),
                **({"pattern": config.pattern} if config.pattern and kind == "oneshot" else {})}

    def compute(run_dir):
        model, tuner = prepare(dataclasses.replace(config, seed=seed), accelerator, run_dir / "step-checkpoint")
        ticket, load_weights = BASELINES[kind](model, config, sparsity, seed)
        ticket.apply(model, check_weights=kind == "oneshot", load_weights=load_weights)
        set_seed(seed)
        return {**tuner.fit(model), "sparsity": ticket.sparsity}
    return cached(Path(config.output_root), f"{kind}-{config.task}", settings, compute, accelerator)


def check_model(config: ExperimentConfig, shuffle: Optional[str] = None) -> None:
    """Refuse, before any training, a model whose prunable set cannot be named (an unknown architecture, or a
    known one whose matrices do not match its layout), or θ0″ across layers where there are no layers to
    permute. Builds the model's skeleton from its config on the meta device (no weights are read)."""
    import torch
    from transformers import AutoConfig, AutoModel

    hf_config = AutoConfig.from_pretrained(config.model)
    with torch.device("meta"):
        skeleton = AutoModel.from_config(hf_config)
    prunable_modules(skeleton)
    if shuffle == "layers":
        check_layer_shuffle(skeleton)


def _full_stats(config: ExperimentConfig, accelerator) -> Dict[str, Any]:
    """The full model over ``seeds`` fine-tunings: runs, mean, sample std, n."""
    return stats(free_first([config.seed + i for i in range(config.seeds)],
                            lambda seed: full_model(config, seed, accelerator)["default"]))


def table2(config: ExperimentConfig, accelerator: Optional[Accelerator] = None) -> Dict[str, Any]:
    """Full model over seeds, the IMP row, and the baselines, with verdicts.

    The IMP row is the paper's f(x; m_IMP ⊙ θ0, γ0) fine-tuned from the start at each level. With
    ``head: rewind`` that is the IMP run itself (the head goes back to γ0 with the body, Algorithm 1), at no extra
    cost; otherwise each level's mask is retrained from θ0 with a fresh head (``imp_fresh_head``), and the run's
    own trajectory, whose head was carried across rounds (the reference code), is shown beside it, labelled.
    With ``verdict_seeds`` k > 1 the decisive levels (the highest matching level and the one above it, under both
    criteria) get k trainings of their IMP mask from θ0 (the IMP run's own round is the first), repeated until the
    answer stops moving; the baselines get k seeds at the highest matching level. Levels whose round gives no
    verdict (an early-stopped search round, or any round with a fresh head) are trained where ``verdict_levels``
    needs them (:func:`~.verdicts.probe`: all, top_down or bisect); the others are listed as ``untrained_levels``
    and have no row.
    """
    check_model(config, shuffle=config.shuffle_mode if "shuffled" in config.baselines else None)
    full = _full_stats(config, accelerator)
    imp = run_imp(config, accelerator)
    runs, carried = {}, {}
    for record in imp["trajectory"][1:]:
        if config.head == "rewind" and record["metric"] is not None:
            runs[record["target_sparsity"]] = [record["metric"]]  # the round itself is f(x; m ⊙ θ0, γ0)
        elif config.head != "rewind":
            carried[record["target_sparsity"]] = record["metric"]
    # the other levels (early-stopped search rounds, or a fresh head) are trained from θ0 where a verdict needs
    # them (verdict_levels), and the decisive ones get k seeds, until the answers stop moving
    levels = [record["target_sparsity"] for record in imp["trajectory"][1:]]
    k = config.verdict_seeds
    runs = probe(levels, full, k, lambda level, i: baseline(config, "imp_fresh_head", level, accelerator,
                                                            seed=config.seed + i)["default"],
                 config.verdict_levels, runs)
    top = highest(runs, full)
    rows = []
    for level, level_runs in sorted(runs.items()):
        imp_stats = stats(level_runs)
        rows.append({"sparsity": level, "imp": imp_stats["mean"], "imp_stats": imp_stats,
                     **({"imp_carried_head": carried[level]} if level in carried else {}),
                     "matching": matching(imp_stats["mean"], full),
                     "strictly_matching": strictly_matching(imp_stats["mean"], full)})
    at = _baseline_levels(config, list(runs), top)
    jobs = [(row["sparsity"], kind, config.seed + i) for row in rows if any(abs(row["sparsity"] - s) < 1e-6 for s in at)
            for kind in config.baselines
            for i in range(k if top is not None and abs(row["sparsity"] - top) < 1e-6 else 1)]
    scores = dict(zip(jobs, free_first(jobs, lambda job: baseline(config, job[1], job[0], accelerator,
                                                                  seed=job[2])["default"])))
    for row in rows:
        for kind in config.baselines:
            kind_runs = [score for (level, of, _), score in scores.items() if level == row["sparsity"] and of == kind]
            if kind_runs:
                kind_stats = stats(kind_runs)
                row[kind], row[f"{kind}_stats"] = kind_stats["mean"], kind_stats
    return _save(config, "table2", {
        "task": config.task, "metric": imp["metric"], "full": full, "imp_run": imp["run"], "rows": rows,
        "imp_trajectory": every_metric(imp["trajectory"]),
        "baselines": config.baselines, "verdict_seeds": k, "verdict_levels": config.verdict_levels,
        "untrained_levels": [level for level in levels if level not in runs], "highest_winning_sparsity": top,
        **row_answers(rows, full, top),
        "lead": lead_at(rows, top, config.baselines),
        "imp_row": ("head rewound to γ0 with the body (the IMP run)" if config.head == "rewind"
                    else "IMP mask retrained from θ0 with a fresh head")
        + ("; masks from early-stopped search rounds, retrained in full from θ0" if config.early_stop_every else "")
        + (f" ({config.verdict_levels} levels)" if config.verdict_levels != "all" else ""),
        "pruned": "encoder matrices, pooler left out" if config.prune_pooler is False else "the paper's set"})


def _baseline_levels(config: ExperimentConfig, levels, highest: Optional[float]):
    """Where the baselines run: ``baseline_sparsities``; or ``baseline_offsets`` above the highest matching level
    (the lowest level when none matches); or every level."""
    if config.baseline_sparsities is not None:
        return list(config.baseline_sparsities)
    if config.baseline_offsets is None:
        return list(levels)
    base = highest if highest is not None else min(levels)
    wanted = [base + offset for offset in config.baseline_offsets]
    return [level for level in levels if any(abs(level - w) < 1e-6 for w in wanted)]


def table3(config: ExperimentConfig, accelerator: Optional[Accelerator] = None) -> Dict[str, Any]:
    """Rewinding to θi for each i in ``rewind_points`` (fractions of training) and standard pruning."""
    check_model(config)
    full = _full_stats(config, accelerator)
    points = [*config.rewind_points, None]
    runs = free_first(points, lambda point: run_imp(dataclasses.replace(
        config, rewind=point if point is None or point > 0 else 0), accelerator))
    rows = []
    for point, imp in zip(points, runs):
        final = imp["trajectory"][-1]
        rows.append({"rewind": "standard pruning" if point is None else f"{point:.0%}", "fraction": point,
                     "sparsity": final["target_sparsity"], "metric": final["metric"],
                     "matching": matching(final["metric"], full), "imp_run": imp["run"],
                     "trajectory": [(r["target_sparsity"], r["metric"]) for r in imp["trajectory"]]})
    return _save(config, "table3", {"task": config.task, "metric": imp["metric"], "full": full, "rows": rows})


def transfer(config: ExperimentConfig, accelerator: Optional[Accelerator] = None) -> Dict[str, Any]:
    """Figure 3: a ``transfer_sparsity`` ticket from each source, fine-tuned on each target task with a fresh head.

    Targets are ``transfer_tasks``; sources are the targets plus ``transfer_sources``. A source is a task name
    (its IMP run under this config's settings, task swapped, so Table 2's runs are reused; ``mlm`` reads
    ``mlm_data_dir``), a YAML config (its own IMP run with its own settings, e.g. SQuAD at its length), or a
    ticket file; ``task_overrides`` gives single tasks their own training settings. With ``rewind`` set to θi
    (Figure 4) task sources are found with rewinding and carry their θi weights into the target. Each source's
    IMP run is trained just before its row of cells, and its ticket read only if a cell of the row is not cached.
    The diagonal is a task's own ticket retrained from θ0 with a fresh head, and the ``oneshot`` row is one-shot
    magnitude pruning of θ0 at the same sparsity. A source counts as at least as good as a target's own ticket
    where it scores within one standard deviation of the target's full model below it.
    """
    check_model(config)
    targets, s = list(config.transfer_tasks), config.transfer_sparsity
    per_task = {t: config.for_task(t) for t in targets}
    listed = [_TransferSource.of(config, source, per_task, accelerator)
              for source in targets + [t for t in config.transfer_sources if t not in targets]]
    by_label = {source.label: source for source in listed}
    sources, origin = list(by_label), {label: source.run for label, source in by_label.items()}

    def cell(pair) -> float:  # the source's ticket fine-tuned on the target
        source, target = pair
        if source == "oneshot":
            return baseline(per_task[target], "oneshot", s, accelerator)["default"]
        target_config, found = per_task[target], by_label[source]
        found.find()  # the source's IMP run before its cells
        settings = {**target_config.training_settings(), "seed": config.seed, "sparsity": s,
                    "source_run": origin[source]}

        def compute(run_dir):
            model, tuner = prepare(target_config, accelerator, run_dir / "step-checkpoint")
            found.ticket().transfer_to(model, task=target_config.task)
            set_seed(config.seed)
            return tuner.fit(model)
        return cached(Path(config.output_root), f"transfer-{source}-to-{target}", settings, compute,
                      accelerator)["default"]
    pairs = [(source, target) for source in [*sources, "oneshot"] for target in targets]
    matrix: Dict[str, Dict[str, float]] = {}
    for (source, target), score in zip(pairs, free_first(pairs, cell)):
        matrix.setdefault(source, {})[target] = score
    full = {t: _full_stats(per_task[t], accelerator) for t in targets}
    at_least_own, matched = transfer_verdicts(matrix, full, targets, [*sources, "oneshot"])
    wins = {src: len(ts) for src, ts in at_least_own.items()}
    return _save(config, "transfer", {"tasks": targets, "sources": sources, "sparsity": s, "matrix": matrix,
                                      "rewind": config.rewind, "source_runs": origin,
                                      "full": full, "at_least_own_ticket": wins, "matching_targets": matched,
                                      "metrics": {t: get_task(t).metric for t in targets}})


@dataclasses.dataclass
class _TransferSource:
    """One transfer source: its label in the matrix, the run that found its ticket, and the ticket, read only when
    a cell still has to be trained. A source's IMP run comes before its cells, its cells before the next source's
    run; finished cells need no ticket, so a θi run's final ticket (with θi, as large as the model) need not
    outlive its cells."""
    label: str
    run: str
    imp: Optional[ExperimentConfig] = None  # the IMP run that finds the ticket; None for a ticket file
    sparsity: float = 0.0
    loaded: Optional[Ticket] = None
    accelerator: Optional[Accelerator] = None

    @classmethod
    def of(cls, config: ExperimentConfig, source: str, per_task: Dict[str, ExperimentConfig],
           accelerator) -> "_TransferSource":
        """A task (its IMP run under ``config``'s settings), a YAML config (its own IMP run) or a ticket file."""
        if source.endswith(".safetensors"):
            ticket = Ticket.load(source)
            return cls(Path(source).stem, f"file:{ticket.fingerprint[:12]}:{ticket.sparsity:.4f}", loaded=ticket)
        if source.endswith((".yaml", ".yml")):
            found = dataclasses.replace(ExperimentConfig(**load_yaml(source)), output_root=config.output_root,
                                        experiment="imp").validate()
        else:
            found = per_task.get(source) or config.for_task(source)
        return cls(found.task, found.run_name(), imp=found, sparsity=config.transfer_sparsity, accelerator=accelerator)

    def find(self) -> None:
        """Train the IMP run unless it is finished (nothing to do for a ticket file)."""
        if self.imp is not None and not (imp_run_dir(self.imp) / "metrics.json").exists():
            run_imp(self.imp, self.accelerator)

    def ticket(self) -> Ticket:
        """The ticket at the transfer sparsity, read on the first call (a θi run whose last ticket did not travel
        trains its last round again first: :func:`~.imp_run.run_imp`)."""
        if self.loaded is None:
            run_imp(self.imp, self.accelerator)
            self.loaded = imp_ticket(self.imp, self.sparsity)
        return self.loaded


def every_metric(trajectory: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Each IMP level with every metric its evaluation returned (e.g. SQuAD's EM and F1, MLM's perplexity)."""
    return [{"sparsity": r["target_sparsity"], **{k: v for k, v in r["metrics"].items() if k != "default"}}
            for r in trajectory]


def save_imp(config: ExperimentConfig, results: Dict[str, Any]) -> Dict[str, Any]:
    """``tables/imp-<task>.json``: an IMP run's trajectory with every metric, for the report (``experiment: imp``)."""
    last = results["trajectory"][-1]["round"]
    theta0 = Ticket.load(imp_run_dir(config) / "imp" / ticket_file(last)).theta0
    return _save(config, "imp", {"task": config.task, "metric": results["metric"], "imp_run": results["run"],
                                 "imp_trajectory": every_metric(results["trajectory"]),
                                 **({"theta0": theta0} if theta0 else {})})


def _save(config: ExperimentConfig, experiment: str, result: Dict[str, Any]) -> Dict[str, Any]:
    result = {"experiment": experiment, "model": config.model, "settings": dataclasses.asdict(config), **result}
    folder = Path(config.output_root) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    name = config.task if experiment != "transfer" else \
        "matrix" + ("" if config.rewind == 0 else f"-rewind-{config.rewind}")
    atomic_write_text(folder / f"{experiment}-{name}.json", json.dumps(result, indent=1, default=str))
    return result


EXPERIMENTS = {"table2": table2, "table3": table3, "transfer": transfer}
