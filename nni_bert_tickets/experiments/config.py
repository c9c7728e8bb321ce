"""Typed experiment settings: the single source of truth for CLI flags, YAML files, run names and logs.

Every field of :class:`ExperimentConfig` is a ``--flag`` (underscores become dashes), a YAML key, and part
of the run's hash name, except the fields in ``NOT_HASHED`` (where output goes, how verbose it is).
Precedence: defaults < ``--config FILE`` < explicit flags.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Sequence

import yaml

from ..core.early_stop import EarlyStop
from ..core.masks import parse_nm, sparsity_schedule
from ..core.naming import unit_name  # noqa: F401 (re-exported: experiments name units through config)
from ..core.rewind import Rewind
from ..core.targets import check_sparsity
from ..core.ticket import Ticket
from ..tasks import get_task, task_names
from ..training.loop import TrainConfig
from .tracking import check_trackers
from .hints import element_of, kind_of
from .verdicts import PROBE_ORDERS

__all__ = ["ExperimentConfig", "load_yaml", "choices_of"]
# where and how, not what
NOT_HASHED = ("output_root", "log_level", "checkpoint_steps", "keep", "report_to", "share_dense_round")
# Settings of the paper's tables and figures: they choose which runs to make, not how one run goes, so they
# are not part of any single run's name (an IMP run is shared by Table 2, Table 3 and the transfer matrix).
EXPERIMENT_FIELDS = ("experiment", "seeds", "baselines", "baseline_sparsities", "baseline_offsets", "shuffle_mode",
                     "rewind_points",
                     "transfer_tasks", "transfer_sources", "transfer_sparsity", "mlm_data_dir", "task_overrides",
                     "grid_learning_rates", "grid_epochs", "verdict_seeds", "verdict_levels", "ticket")
TRAINING_FIELDS = ("task", "model", "data_dir", "max_train_samples", "max_eval_samples", "learning_rate",
                   "batch_size", "epochs", "max_steps", "weight_decay", "max_grad_norm", "warmup_ratio",
                   "eval_batch_size", "max_length", "padding", "group_by_length", "doc_stride", "mlm_probability",
                   "squad_train_articles", "mlm_head_warmup_steps", "mlm_head_warmup_lr")
# settings that only one task reads: left out of the other tasks' run names, so that a transfer config naming
# them does not rename the GLUE runs it shares with Table 2
TASK_FIELDS = {"squad": ("doc_stride", "squad_train_articles"),
               "mlm": ("mlm_probability", "mlm_head_warmup_steps", "mlm_head_warmup_lr")}
# the strategies of ``experiments.tables.BASELINES`` by name (a test keeps the two equal; config stays below tables)
BASELINE_NAMES = ("random_pruning", "random_reinit", "shuffled", "oneshot", "imp_fresh_head")


def _setting(default: Any = dataclasses.MISSING, help: str = "", choices: Sequence[str] = (), factory=None):
    """A field of :class:`ExperimentConfig`: its default, the one line ``--help`` shows, and (for a choice) the
    values it may take, which :meth:`ExperimentConfig.validate` checks."""
    meta = {"help": help, **({"choices": tuple(choices)} if choices else {})}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_TRAIN = TrainConfig()  # the training defaults have one home: the training loop's own config


@dataclass
class ExperimentConfig:
    """Every setting of an experiment; each is a ``--flag``, a YAML key and, unless in ``NOT_HASHED`` or
    ``EXPERIMENT_FIELDS``, part of the run's name. ``help`` in each field's metadata is what ``--help`` shows."""
    # what
    task: str = _setting("rte", "a GLUE task (rte, mrpc, stsb, cola, sst2, wnli, qnli, qqp, mnli), squad or mlm")
    model: str = _setting("bert-base-uncased", "pre-trained checkpoint: a Hub id or a local folder (θ0)")
    data_dir: Optional[str] = _setting(None, "folder of <task>/<split>.jsonl files; unset: nyu-mll/glue from the Hub")
    max_train_samples: Optional[int] = _setting(None, "use only the first N training examples (unset: all of them)")
    max_eval_samples: Optional[int] = _setting(None, "evaluate on only the first N examples (unset: all)")
    # pruning
    target_sparsity: float = _setting(0.7, "the sparsity IMP stops at (fraction of the pruned matrices' weights)")
    schedule: str = _setting("linear", "linear: each round removes `step` of the original weights (reference code); "
                             "geometric: `step` of the remaining ones (paper's text)", ("linear", "geometric"))
    step: float = _setting(0.1, "sparsity removed per IMP round, in (0, 1)")
    rewind: Optional[float] = _setting(0, Rewind.HELP)
    head: str = _setting("keep", "the task head on rewind: keep its trained values (reference code), rewind it with "
                         "the body (γ0, Algorithm 1) or reinit it", ("keep", "rewind", "reinit"))
    prune_pooler: Optional[bool] = _setting(None, "prune the pooler: unset = where the model has one (the paper); "
                                            "false leaves an untrained pooler out")
    pattern: Optional[str] = _setting(None, "N:M pattern, e.g. 2:4: IMP never prunes more than M-N of any M "
                                      "consecutive input weights and ends on an N:M mask at target 1-N/M (unset: "
                                      "unstructured)")
    # early-stopped search rounds (early-bird tickets)
    early_stop_every: int = _setting(0, "every N steps compute the next mask and stop a search round once it settles "
                                     "(0: rounds train fully, the paper)")
    early_stop_threshold: float = _setting(0.01, "a round stops when the next mask moved less than this since each "
                                           "of the last early_stop_window checks (normalised Hamming distance over "
                                           "the weights a step prunes) ...")
    early_stop_patience: int = _setting(3, "... at this many checks in a row")
    early_stop_window: int = _setting(1, "compare each check's mask with the masks of this many checks before it "
                                      "(the largest distance counts; 1: the previous check; Early-Bird: 5)")
    early_stop_min_fraction: float = _setting(0.0, "never stop a round before this fraction of its steps, in [0, 1)")
    # training (the paper's defaults, from TrainConfig)
    learning_rate: float = _setting(_TRAIN.learning_rate, "AdamW learning rate (linear decay to 0)")
    batch_size: int = _setting(_TRAIN.batch_size, "training batch size per process")
    epochs: float = _setting(_TRAIN.epochs, "epochs per training run (per IMP round)")
    max_steps: Optional[int] = _setting(_TRAIN.max_steps, "optimizer steps per training run, overriding epochs "
                                        "(unset: epochs decide)")
    weight_decay: float = _setting(_TRAIN.weight_decay, "AdamW weight decay (not on biases and LayerNorm)")
    max_grad_norm: float = _setting(_TRAIN.max_grad_norm, "gradient clipping norm (0: none)")
    warmup_ratio: float = _setting(_TRAIN.warmup_ratio, "fraction of the steps spent on linear LR warm-up")
    eval_batch_size: int = _setting(_TRAIN.eval_batch_size, "evaluation batch size")
    max_length: int = _setting(128, "longest input in tokens (longer ones are truncated, or windowed for SQuAD)")
    padding: str = _setting(_TRAIN.padding, "dynamic: pad each batch to its longest input; max_length: pad all to "
                            "max_length (the reference path)", ("dynamic", "max_length"))
    group_by_length: bool = _setting(_TRAIN.group_by_length, "batch inputs of similar length (dynamic padding only)")
    doc_stride: int = _setting(128, "SQuAD: context tokens between the starts of two windows")
    mlm_probability: float = _setting(0.15, "MLM: fraction of tokens masked")
    mlm_head_warmup_steps: int = _setting(0, "MLM: first train a missing MLM head for N steps, body frozen "
                                          "(θ0 = body + that head)")
    mlm_head_warmup_lr: float = _setting(1e-3, "MLM: learning rate of the head warm-up")
    squad_train_articles: Optional[int] = _setting(None, "SQuAD: re-split the dev set, its first N articles train "
                                                   "and the rest evaluate (unset: the train split trains)")
    seed: int = _setting(42, "seed of the run (each IMP round and each fine-tuning is seeded from it)")
    # which experiment (examples/glue.py)
    experiment: str = _setting("imp", "what runs: one IMP run, Table 2, Table 3, the transfer matrix (Figure 3), "
                               "the dense grid, or training a given ticket",
                               ("imp", "table2", "table3", "transfer", "dense_grid", "ticket"))
    ticket: Optional[str] = _setting(None, "experiment ticket: the ticket folder, file or Hub repo id to fine-tune "
                                     "from θ0 (seeds times)")
    seeds: int = _setting(3, "full-model fine-tunings (mean ± sample std) for the verdicts; at least 2 for a verdict")
    verdict_seeds: int = _setting(1, "Table 2: trainings of each decisive level's subnetwork and of the baselines at "
                                  "the highest matching level (1: the paper's single run)")
    verdict_levels: str = _setting("all", "Table 2: which IMP levels are trained for a verdict where the run gives "
                                   "none (early-stopped search, or a fresh head): all, top_down from the highest "
                                   "level (exact), or bisect (assumes matching levels form a down-set)", PROBE_ORDERS)
    baselines: List[str] = _setting(help="Table 2 baselines to run", choices=BASELINE_NAMES,
                                    factory=lambda: ["random_pruning", "random_reinit", "shuffled"])
    baseline_sparsities: Optional[List[float]] = _setting(None, "IMP levels to run the baselines at (unset: every "
                                                          "level, or see baseline_offsets)")
    baseline_offsets: Optional[List[float]] = _setting(None, "baselines relative to the highest matching level, "
                                                       "e.g. 0 0.2: there and 20 points above (unset: see "
                                                       "baseline_sparsities)")
    shuffle_mode: str = _setting("layers", "θ0'' shuffling: whole layers across depth (reference code) or entries "
                                 "within every matrix", ("layers", "within"))
    rewind_points: List[float] = _setting(help="Table 3: rewind points as fractions of training (0: θ0)",
                                          factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.5])
    transfer_tasks: List[str] = _setting(help="transfer matrix: the target tasks (each also a source)",
                                         factory=lambda: ["rte", "mrpc", "stsb", "cola", "sst2"])
    transfer_sources: List[str] = _setting(help="transfer matrix: extra ticket sources: a task (e.g. mlm), a YAML "
                                           "config of an IMP run or a ticket file", factory=list)
    transfer_sparsity: float = _setting(0.7, "transfer matrix: the sparsity of the transferred tickets")
    mlm_data_dir: Optional[str] = _setting(None, "data_dir of an mlm source (unset: WikiText-2 from the Hub)")
    task_overrides: Dict[str, Dict[str, Any]] = _setting(
        help="transfer: training settings of single tasks, so each task's runs are those its own Table 2 config "
             "made, e.g. '{sst2: {max_train_samples: 5000}}'", factory=dict)
    grid_learning_rates: List[float] = _setting(help="dense_grid: the learning rates of the grid",
                                                factory=lambda: [1e-4, 3e-5])
    grid_epochs: List[float] = _setting(help="dense_grid: the epochs of the grid (seeds fine-tunings per cell)",
                                        factory=lambda: [2.0, 4.0, 6.0])
    # bookkeeping
    output_root: str = _setting("runs", "where run directories and tables go")
    checkpoint_steps: int = _setting(_TRAIN.checkpoint_steps, "save a resumable training state every N steps (0: "
                                     "per round only)")
    keep: str = _setting("all", "what a finished IMP run keeps: all, tickets (no resume state) or final (the last "
                         "ticket and the trajectory)", ("all", "tickets", "final"))
    share_dense_round: bool = _setting(True, "train IMP's dense round 0 once, with its θi snapshots, for all runs "
                                       "that differ only in rewind and target_sparsity "
                                       "(<output_root>/dense-<task>-<hash>)")
    log_level: str = _setting("INFO", "logging level (DEBUG, INFO, WARNING, ...)")
    report_to: List[str] = _setting(help="Accelerate trackers to log to, e.g. tensorboard", factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.report_to, str):  # report_to: tensorboard in a YAML file
            self.report_to = [self.report_to]
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # 2 and 2.0 are the same setting, and hash the same
            value = getattr(self, f.name)
            if element_of(hints[f.name]) is float and value is not None:
                setattr(self, f.name, [float(v) for v in value])
            elif kind_of(hints[f.name]) is float and isinstance(value, int) and not isinstance(value, bool) \
                    and f.name != "rewind":
                setattr(self, f.name, float(value))
        if isinstance(self.rewind, (int, float)) and not isinstance(self.rewind, bool):
            try:  # a step count written as 100.0 is 100; a bad value is refused by validate()
                self.rewind = Rewind.parse(self.rewind).value
            except ValueError:
                pass

    def train_config(self) -> TrainConfig:
        names = {f.name for f in fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})

    def hashed(self) -> Dict[str, Any]:
        """The settings that make an IMP run what it is (its name is a hash of them)."""
        return self._identity(f.name for f in fields(self) if f.name not in NOT_HASHED + EXPERIMENT_FIELDS)

    def training_settings(self) -> Dict[str, Any]:
        """The settings of one fine-tuning: data, model, optimisation (not pruning, not the seed)."""
        return self._identity(TRAINING_FIELDS)

    def _identity(self, names) -> Dict[str, Any]:
        """The named settings that differ from their defaults (plus task and model, always), so that adding a
        setting with a default later leaves every earlier run's name, and so its results, valid."""
        out = {}
        other_tasks = {n for task, owned in TASK_FIELDS.items() if task != self.task for n in owned}
        names = set(names) - other_tasks
        for f in fields(self):
            if f.name in names:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                value = getattr(self, f.name)
                if value != default or f.name in ("task", "model"):
                    out[f.name] = value
        return out

    def run_name(self) -> str:
        """The IMP run's directory name: ``imp-<task>-<hash of hashed()>``, the one naming scheme of every unit."""
        return unit_name(f"imp-{self.task}", self.hashed())

    def early_stop(self):
        """The IMP run's :class:`~.early_stop.EarlyStop`, or None (``early_stop_every: 0``)."""
        if not self.early_stop_every:
            return None
        return EarlyStop(self.early_stop_every, self.early_stop_threshold, self.early_stop_patience,
                         self.early_stop_window, self.early_stop_min_fraction)

    def for_task(self, task: str) -> "ExperimentConfig":
        """These settings for ``task`` (a transfer target or a task-named source): ``mlm`` reads ``mlm_data_dir``,
        and ``task_overrides[task]`` replaces the settings it names."""
        settings = {"data_dir": self.mlm_data_dir if task == "mlm" else self.data_dir,
                    **self.task_overrides.get(task, {})}  # an override may name data_dir too (a SQuAD target)
        return dataclasses.replace(self, task=task, **settings)

    def levels(self) -> List[float]:
        """The sparsities the IMP run passes (0 first)."""
        return [0.0] + sparsity_schedule(self.target_sparsity, self.schedule, self.step)

    def validate(self) -> "ExperimentConfig":
        get_task(self.task)
        check_sparsity(self.target_sparsity, "target_sparsity")
        if not 0 < self.step < 1:
            raise ValueError(f"step must be in (0, 1), got {self.step!r}")
        for key in ("batch_size", "epochs", "learning_rate", "max_length", "eval_batch_size", "seeds"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)!r}")
        if self.checkpoint_steps < 0:
            raise ValueError(f"checkpoint_steps must be >= 0, got {self.checkpoint_steps!r}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps!r}")
        if self.pattern is not None:
            n, m = parse_nm(self.pattern)
            if self.target_sparsity > 1 - n / m + 1e-9:
                raise ValueError(f"target_sparsity {self.target_sparsity:g} is beyond what the {self.pattern} pattern "
                                 f"allows ({1 - n / m:g}); e.g. target_sparsity: {1 - n / m:g}")
        for f in fields(self):
            allowed = f.metadata.get("choices")
            if allowed and isinstance(getattr(self, f.name), list):
                unknown = sorted(set(getattr(self, f.name)) - set(allowed))
                if unknown:
                    raise ValueError(f"unknown {f.name} {unknown}; known: {', '.join(allowed)}")
            elif allowed and getattr(self, f.name) not in allowed:
                raise ValueError(f"{f.name} must be one of {allowed}, got {getattr(self, f.name)!r}")
        for task in self.transfer_tasks:
            get_task(task)
        for source in self.transfer_sources:
            _check_transfer_source(source, self.transfer_sparsity)
        check_sparsity(self.transfer_sparsity, "transfer_sparsity")
        Rewind.parse(self.rewind)  # a bad rewind setting is named here
        self._validate_experiment()
        return self

    def _validate_experiment(self) -> None:
        """Settings that would only fail, or silently do something else, after hours of training."""
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or value <= 0):
                raise ValueError(f"{key} must be a positive number of examples or null (all), got {value!r}; "
                                 f"e.g. {key}: 2000")
        if self.mlm_head_warmup_steps < 0 or self.mlm_head_warmup_lr <= 0:
            raise ValueError("mlm_head_warmup_steps must be >= 0 and mlm_head_warmup_lr positive; e.g. "
                             "mlm_head_warmup_steps: 300, mlm_head_warmup_lr: 1e-3")
        if self.keep == "final" and self.experiment in ("table2", "transfer"):
            raise ValueError(f"keep: final deletes the tickets below the target sparsity, which the {self.experiment} "
                             "experiment reads (baselines, retraining, transfer); use keep: tickets, which deletes "
                             "only the resume state")
        check_trackers(self.report_to)
        if isinstance(self.early_stop_every, bool) or not isinstance(self.early_stop_every, int) \
                or self.early_stop_every < 0:
            raise ValueError(f"early_stop_every is a number of steps (0: no early stopping), got "
                             f"{self.early_stop_every!r}; e.g. early_stop_every: 10")
        rule = [f.name for f in fields(self) if f.name.startswith("early_stop_") and f.name != "early_stop_every"
                and getattr(self, f.name) != f.default]
        if not self.early_stop_every and rule:
            raise ValueError(f"{', '.join(rule)} set but early stopping is off; set early_stop_every (e.g. 10) or "
                             "leave them out")
        try:  # a bad threshold, patience, window or min_fraction, named as its setting
            self.early_stop()
        except ValueError as err:
            raise ValueError(str(err).replace("EarlyStop.", "early_stop_")) from None
        if self.prune_pooler not in (None, True, False):
            raise ValueError(f"prune_pooler must be true, false or null, got {self.prune_pooler!r}")
        if not isinstance(self.share_dense_round, bool):
            raise ValueError(f"share_dense_round must be true or false, got {self.share_dense_round!r}")
        levels = self.levels()

        def is_level(s: float) -> bool:
            return any(abs(s - level) < 1e-6 for level in levels[1:])
        shown = ", ".join(f"{x:g}" for x in levels[1:])
        odd = [s for s in self.baseline_sparsities or [] if not is_level(s)]
        if odd:
            raise ValueError(f"baseline_sparsities {odd} are not levels of the IMP run ({self.schedule} schedule, "
                             f"step {self.step}, target {self.target_sparsity}): its levels are {shown}; "
                             f"e.g. baseline_sparsities: [{levels[-1]:g}]")
        if self.baseline_sparsities is not None and self.baseline_offsets is not None:
            raise ValueError("give baseline_sparsities or baseline_offsets, not both")
        bad = [o for o in self.baseline_offsets or [] if not 0 <= o < 1]
        if bad:
            raise ValueError(f"baseline_offsets are sparsity points above the highest matching level, in [0, 1); "
                             f"got {bad}; e.g. baseline_offsets: [0, 0.2]")
        bad = [p for p in self.rewind_points if not 0 <= p < 1]
        if bad:
            raise ValueError(f"rewind_points are fractions of training in [0, 1) (0 is θ0), got {bad}; "
                             "e.g. rewind_points: [0, 0.05, 0.1, 0.2, 0.5]")
        self._validate_overrides()
        if isinstance(self.verdict_seeds, bool) or not isinstance(self.verdict_seeds, int) or self.verdict_seeds < 1:
            raise ValueError(f"verdict_seeds is how many trainings decide each Table-2 verdict (1: the paper's single "
                             f"run), a whole number >= 1, got {self.verdict_seeds!r}; e.g. verdict_seeds: 3")
        if self.experiment in ("table2", "table3", "transfer") and self.seeds < 2:
            raise ValueError(f"seeds: {self.seeds} full-model fine-tuning gives no standard deviation, which the "
                             f"{self.experiment} verdicts (within one std of the full model's mean) need; "
                             "e.g. seeds: 3")
        bad = [v for v in [*self.grid_learning_rates, *self.grid_epochs] if not v > 0]
        if bad or not self.grid_learning_rates or not self.grid_epochs:
            raise ValueError(f"grid_learning_rates and grid_epochs are non-empty lists of positive numbers, got "
                             f"{self.grid_learning_rates!r} and {self.grid_epochs!r}; e.g. grid_epochs: [2, 4, 6]")
        if (self.experiment == "ticket") != (self.ticket is not None):
            raise ValueError("experiment: ticket trains the ticket that `ticket` names, and `ticket` is read by it "
                             f"alone (experiment {self.experiment!r}, ticket {self.ticket!r}); e.g. --experiment "
                             "ticket --ticket tickets/all-MiniLM-L6-v2/mrpc-60")
        if self.experiment == "dense_grid" and not (self.learning_rate in self.grid_learning_rates
                                                    and self.epochs in self.grid_epochs):
            raise ValueError(f"the dense grid must contain the config's own setting (learning_rate "
                             f"{self.learning_rate:g}, epochs {self.epochs:g}) to compare against; add them to "
                             "grid_learning_rates / grid_epochs")
        if self.experiment == "transfer" and not is_level(self.transfer_sparsity):
            raise ValueError(f"transfer_sparsity {self.transfer_sparsity:g} is not a level of the IMP runs the "
                             f"tickets come from (levels: {shown}); e.g. transfer_sparsity: {levels[-1]:g}")

    def _validate_overrides(self) -> None:
        if not isinstance(self.task_overrides, dict) or \
                not all(isinstance(v, dict) for v in self.task_overrides.values()):
            raise ValueError(f"task_overrides maps tasks to settings, e.g. {{sst2: {{max_train_samples: 5000}}}}; got "
                             f"{self.task_overrides!r}")
        if self.task_overrides and self.experiment != "transfer":
            raise ValueError(f"task_overrides is read by the transfer experiment only (experiment is "
                             f"{self.experiment}); set the task's settings directly")
        allowed = set(TRAINING_FIELDS) - {"task"}
        for task, settings in self.task_overrides.items():
            get_task(task)
            unknown = sorted(set(settings) - allowed)
            if unknown:
                raise ValueError(f"task_overrides[{task}]: {unknown} are not training settings; "
                                 f"allowed: {sorted(allowed)}")
            try:  # e.g. max_train_samples: 0
                ExperimentConfig(**{**dataclasses.asdict(self), "task_overrides": {}, "experiment": "imp",
                                    "task": task, **settings})._validate_experiment()
            except (TypeError, ValueError) as err:
                raise ValueError(f"task_overrides[{task}]: {err}") from err


def choices_of(name: str) -> tuple:
    """The values the setting ``name`` may take (its field's ``choices``)."""
    return next(f for f in fields(ExperimentConfig) if f.name == name).metadata["choices"]


def _check_transfer_source(source: str, sparsity: float) -> None:
    """A transfer source names a task, a YAML config of an IMP run, or a ticket file at ``sparsity``."""

    if source.endswith(".safetensors"):
        if not os.path.isfile(source):
            raise ValueError(f"transfer source {source!r} names no ticket: no such file")
        ticket = Ticket.load(source)  # a TicketError for a file that is not a ticket
        if abs(ticket.sparsity - sparsity) > 0.005:
            raise ValueError(f"transfer source {source} is a {ticket.sparsity:.1%} ticket; transfer_sparsity is "
                             f"{sparsity:.1%}")
    elif source.endswith((".yaml", ".yml")):
        if not os.path.isfile(source):
            raise ValueError(f"transfer source {source!r} names no config: no such file")
        found = ExperimentConfig(**load_yaml(source))
        found.validate()
        if not any(abs(level - sparsity) < 1e-6 for level in found.levels()):
            raise ValueError(f"transfer source {source}: its IMP run never reaches transfer_sparsity {sparsity:g} "
                             f"(levels {', '.join(f'{x:g}' for x in found.levels()[1:])})")
    elif source.lower() not in task_names():
        raise ValueError(f"transfer source {source!r} names no task, config (.yaml) or ticket file (.safetensors); "
                         f"known tasks: {', '.join(task_names())}")
    else:
        get_task(source)


def load_yaml(path: str) -> Dict[str, Any]:
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    known = {f.name for f in fields(ExperimentConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; known: {sorted(known)}")
    return values
