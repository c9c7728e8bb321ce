"""The paper's pruning algorithms as NNI 3 pruners.

Both follow NNI's conventions: ``Pruner(model, config_list, evaluator)``, ``compress()`` returning
``(model, masks)`` with masks as ``{module_name: {'weight': mask}}``, and ``unwrap_model()``. Targets that
share a ``global_group_id`` (as :func:`~nni_bert_tickets.bert_config_list` makes them) are pruned as one pool.
Unlike NNI's own pruners, pruned *parameters* are also set to exactly 0, so the unwrapped model is sparse.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Dict, Iterator, List, Literal, Optional, Tuple

import torch
from nni.compression.utils.evaluator import Evaluator

from . import masks as M
from .dense_round import DenseRound, start_fingerprint
from .early_stop import EarlyStop, RoundWatch, StopTraining
from .targets import base_prefix, ticket_key
from .imp_state import (RunStore, body_fingerprint, head_names, restore_state, rewind_params, state_tensors,
                        unwrapped_name)
from .rewind import Rewind
from .seeding import level_seed, seed_round
from .round_evaluator import RoundEvaluator, quiet_step_patch
from .digest import fingerprint
from .ticket import Ticket, model_name, prunable_weights
from .ticket_pruner import _NNIMasks, _TicketPruner

__all__ = ["IMPPruner", "RandomPruner"]
_log = logging.getLogger(__name__)
class RandomPruner(_TicketPruner):
    """Random pruning baseline: a uniformly random global mask at the configured sparsity, seeded.

    Exactly ``round(sparse_ratio * N)`` of the N weights in each global group are pruned, so per-matrix
    sparsity varies around the global one (the reference code's global ``RandomUnstructured``).
    """

    def __init__(self, model: torch.nn.Module, config_list: List[Dict], evaluator: Evaluator | None = None,
                 seed: int = 0, existed_wrappers=None):
        super().__init__(model, config_list, evaluator, existed_wrappers)
        self.seed = seed

    def _single_compress(self, max_steps, max_epochs):
        self._install(self._masks_by_pool(lambda w, s, _: M.random_masks(w, s, seed=self.seed)))

    def compress(self) -> Tuple[torch.nn.Module, _NNIMasks]:  # type: ignore[override]
        return super().compress(None, None)


class IMPPruner(_TicketPruner):
    """Iterative magnitude pruning with rewinding: the paper's way to find a lottery ticket.

    Each round trains the current subnetwork through ``evaluator`` (a fresh optimizer and LR scheduler are
    built for every round), evaluates it, prunes the lowest-magnitude surviving weights globally to the
    next sparsity of the schedule, and rewinds the survivors. The last round trains the subnetwork at the
    config's ``sparse_ratio``. Every round's mask and evaluation are kept in :attr:`trajectory` and
    :attr:`tickets`, so one run yields a ticket at every sparsity it passes.

    Parameters
    ----------
    schedule, step
        ``'linear'`` (default, the reference code): each round removes ``step`` of the original weights
        (10 %, 20 %, ...). ``'geometric'`` (the paper's text): ``step`` of the remaining weights.
    rewind
        Where survivors go back to after pruning (a :class:`~.rewind.Rewind` or its value). ``0`` (default): θ0,
        the pre-trained weights. A whole number k > 0: θk, the weights after k optimizer steps of the first
        (dense) round. A fraction in (0, 1): that fraction of the first round's steps (needs ``max_steps`` or a
        :class:`~.round_evaluator.RoundEvaluator`). ``None``: no rewinding, i.e. standard pruning.
    head
        What the task head (parameters outside the model body, e.g. ``classifier``) does on rewind:
        ``'keep'`` (default, the reference code) keeps its trained values; ``'rewind'`` goes back with the
        body; ``'reinit'`` is freshly initialised each round.
    output_dir
        If given, every round's ticket, ``trajectory.json`` and a resume state are written there, and a
        later ``compress()`` with the same arguments resumes after the last completed round. With θi rewinding
        only the final ticket's file carries the rewind weights (in memory every ticket shares them). With θ0
        rewinding the resume state does not store θ0: a resumed pruner takes it from the model it is given,
        which must hold the same base weights (a fingerprint of every body parameter is checked).
    on_round
        Called as ``on_round(record, ticket)`` after each round's evaluation (e.g. to report to NNI).
    ticket_meta
        Extra :class:`Ticket` fields for every ticket, e.g. ``{"theta0": "..."}`` when θ0 is not the checkpoint.
    early_stop
        An :class:`~.early_stop.EarlyStop`: a round stops once the next mask has settled, unevaluated (``metric``
        None). The last round always trains fully: every ``metric`` is a fully trained subnetwork's. Its
        ``min_fraction`` needs the round's length (``max_steps`` or a :class:`~.round_evaluator.RoundEvaluator`).
    pattern
        ``"N:M"`` (e.g. ``"2:4"``): no round prunes more than M − N of any M consecutive input weights of a row, so
        the run ends on an N:M mask when its target is 1 − N/M (:func:`~.masks.nm_magnitude_masks`). A target
        beyond that, or a matrix whose input dimension M does not divide, is refused before the model is wrapped.
    dense_round
        A :class:`~.dense_round.DenseRound` shared by the runs that start with the same dense fine-tuning (same
        model, seed and training): round 0 is read back from it when it holds the round and this run's θi, else
        trained as usual, taking the snapshots it asks for, and kept there. Everything after round 0 is unchanged,
        so the run is the one it would have been. Not with ``early_stop`` (round 0 could stop by the schedule).
    """

    def __init__(self, model: torch.nn.Module, config_list: List[Dict], evaluator: Evaluator, *,
                 schedule: Literal["linear", "geometric"] = "linear", step: float = 0.1,
                 rewind: int | float | None = 0, head: Literal["keep", "rewind", "reinit"] = "keep",
                 seed: int = 0, task: Optional[str] = None, output_dir: Optional[str] = None,
                 on_round: Optional[Callable[[Dict[str, Any], Ticket], None]] = None,
                 ticket_meta: Optional[Dict[str, Any]] = None, early_stop: Optional[EarlyStop] = None,
                 pattern: Optional[str] = None, dense_round: Optional[DenseRound] = None, existed_wrappers=None):
        if evaluator is None:
            raise ValueError("IMPPruner needs an evaluator: each round is trained through it")
        if head not in ("keep", "rewind", "reinit"):
            raise ValueError(f"head must be 'keep', 'rewind' or 'reinit', got {head!r}")
        rewind_point = Rewind.parse(rewind)  # a bad rewind fails before the model is wrapped
        if not isinstance(early_stop, (EarlyStop, type(None))):
            raise TypeError(f"early_stop must be None or an EarlyStop, got {type(early_stop).__name__}")
        if not isinstance(dense_round, (DenseRound, type(None))):
            raise TypeError(f"dense_round must be None or a DenseRound, got {type(dense_round).__name__}")
        if dense_round is not None and early_stop is not None:
            raise ValueError("dense_round cannot be shared under early_stop: round 0 may stop early, at a step that "
                             "depends on the schedule; leave one of them out")
        M.sparsity_schedule(0.5, schedule, step)  # a bad schedule or step fails before the model is wrapped
        nm = None if pattern is None else M.parse_nm(pattern)
        super().__init__(model, config_list, evaluator, existed_wrappers)
        try:
            target = max(space.sparse_ratio for pool in self._pools().values() for space in pool.values())
            if nm is not None:  # every pooled matrix must hold the pattern, and the target stay within it
                M.check_nm({key: space.target for pool in self._pools().values() for key, space in pool.items()},
                           *nm, sparsity=target)
        except BaseException:
            self.unwrap_model()  # leave the caller's model as it was
            raise
        self.levels = [0.0] + M.sparsity_schedule(target, schedule, step)
        self.rewind_point, self.rewind = rewind_point, rewind_point.value
        self.schedule, self.step, self.head = schedule, step, head
        self.seed, self.task, self.output_dir, self.on_round = seed, task, output_dir, on_round
        self.ticket_meta, self.early_stop = dict(ticket_meta or {}), early_stop
        self.pattern, self._nm = pattern, nm
        self.dense_round = dense_round
        self._start = start_fingerprint(self.bound_model, seed) if dense_round is not None else None
        self.trajectory: List[Dict[str, Any]] = []
        self.tickets: List[Ticket] = []
        self._theta0_prunable = {k: w.detach().clone() for k, w in prunable_weights(self.bound_model).items()}
        self._head0 = {n: p.detach().clone() for n, p in self.bound_model.named_parameters()
                       if n in head_names(self.bound_model)}  # with θ0's body from the model: round 0's start
        # what a resume must find again: the same matrices pruned, found on the same θ0
        self._covered = sorted(ticket_key(self.bound_model, name) for name in self._target_spaces)
        self._base = fingerprint(self._theta0_prunable, {k: torch.ones_like(w, dtype=torch.bool)
                                                         for k, w in self._theta0_prunable.items()})
        self._body, self._base_model = body_fingerprint(self.bound_model), model_name(self.bound_model)
        self._rewind_state = self._state() if rewind_point.to_theta0 else None
        self._store = (RunStore(output_dir, settings=self._settings(), base_model=self._base_model)
                       if output_dir else None)

    # ---- the level loop ------------------------------------------------------------------------------------
    def compress(self, max_steps: int | None = None, max_epochs: int | None = None):
        return super().compress(max_steps, max_epochs)

    def _single_compress(self, max_steps: int | None, max_epochs: int | None) -> None:
        """Algorithm 1, one sparsity level per round: train the subnetwork f(x; m ⊙ θ, γ), keep it as this level's
        ticket, prune the lowest-magnitude surviving weights globally to the next level, rewind the survivors.
        The run on disk (:mod:`.imp_state`) is saved beside each round, and a rerun resumes after the last one."""
        if self.early_stop is not None and len(self.levels) > 1:  # before any training: the rule fits the rounds
            self.early_stop.check_round(self._round_steps(max_steps, max_epochs))
        for level in range(self._resume(max_steps, max_epochs), len(self.levels)):
            _log.info("IMP round %d/%d at sparsity %.4f", level, len(self.levels) - 1, self.levels[level])
            seed_round(self.seed, level)
            shared = level == 0 and self.dense_round is not None                # round 0 trained once, for all runs
            result = (self._shared_dense_round(max_steps, max_epochs) if shared     # train f(x; m ⊙ θ)
                      else self._train_and_evaluate(level, max_steps, max_epochs))  # (and take θi in round 0)
            self._keep_ticket(level, *result)                                 # the subnetwork at this level
            if level + 1 < len(self.levels):
                self._prune_globally(self.levels[level + 1])                  # prune the smallest survivors, globally
                self._rewind_survivors(level)                                 # rewind them to θ0 (or θi)
            self._save(level)                                                 # beside it: the run on disk

    def _prune_globally(self, sparsity: float) -> None:
        """Prune the lowest-magnitude surviving weights of each pool (all matrices together) to ``sparsity``."""
        self._install(self._masks_by_pool(self._magnitude, sparsity))

    def _magnitude(self, weights, sparsity, masks) -> M.Masks:
        """IMP's pruning step: global magnitude, capped per group of M input weights under an N:M ``pattern``."""
        if self._nm is None:
            return M.global_magnitude_masks(weights, sparsity, masks)
        return M.nm_magnitude_masks(weights, sparsity, *self._nm, masks)

    def _keep_ticket(self, level: int, metric: Optional[float], metrics: Dict[str, Any], steps: Dict[str, Any]) -> None:
        """This level's record in :attr:`trajectory` and its :class:`Ticket` in :attr:`tickets`; then ``on_round``."""
        record = {"round": level, "sparsity": M.sparsity({k: v["weight"] for k, v in self.get_masks().items()}),
                  "target_sparsity": self.levels[level], "metric": metric, "metrics": metrics, **steps}
        self.trajectory.append(record)
        self.tickets.append(self.ticket(
            base_weights=self._theta0_prunable, task=self.task,
            algorithm="standard" if self.rewind_point.standard else "imp", schedule=f"{self.schedule}:{self.step}",
            round=level, seed=self.seed, rewind=self.rewind_point.name, metrics={"metric": metric, **metrics},
            weights=self._ticket_weights(), **self.ticket_meta))
        if self.on_round is not None:
            self.on_round(record, self.tickets[-1])

    def _train_and_evaluate(self, level: int, max_steps, max_epochs, tasks: Tuple[Callable[[], None], ...] = ()):
        """Train the current subnetwork for one round through the evaluator (a fresh optimizer and schedule), with
        its after-step tasks: the θi capture in round 0, and the watch that counts steps (and may stop a search
        round early), then ``tasks``. Then evaluate it; a round stopped early is not evaluated."""
        capture = level == 0 and self.rewind_point.to_theta_i and self._rewind_state is None
        watch = self._watch(level, self._round_steps(max_steps, max_epochs))
        own = [self._snapshot_at(self._rewind_step(max_steps, max_epochs))] if capture else []
        with self._bound([*own, watch, *tasks]) as evaluator:
            with quiet_step_patch(evaluator):
                watch.train(evaluator, max_steps, max_epochs,
                            steps_before=sum(r.get("steps") or 0 for r in self.trajectory))
            self.bound_model.zero_grad(set_to_none=True)  # a loop cut short mid-step leaves gradients behind
            result = evaluator.evaluate() if watch.stopped_at is None else None  # a cut-short round: no verdict
        if capture and self._rewind_state is None:
            raise RuntimeError(f"the first round ended before step {self.rewind}: cannot rewind to it")
        metric, metrics = result if isinstance(result, tuple) else (result, {})
        return (None if metric is None else float(metric)), dict(metrics or {}), watch.record(bool(self.early_stop))

    @contextlib.contextmanager
    def _bound(self, after_step: List[Callable[[], None]]) -> Iterator[Evaluator]:
        """The evaluator bound to the model for one training (a fresh optimizer and schedule), running ``after_step``
        after each optimizer step; unbound, with no gradient left behind, when the block ends."""
        evaluator = self.evaluator
        evaluator.bind_model(self.bound_model, self._get_param_names_map())
        evaluator.patch_optimizer_step([], after_step)
        try:
            yield evaluator
        finally:
            self.bound_model.zero_grad(set_to_none=True)
            evaluator.unbind_model()

    def _current_step(self) -> Optional[Callable[[], int]]:
        """Which step just finished, where the evaluator can tell (else the after-step tasks count their calls)."""
        return self.evaluator.current_step if isinstance(self.evaluator, RoundEvaluator) else None

    def _watch(self, level: int, total: Optional[int]) -> RoundWatch:  # with early_stop, stops rounds but the last
        current_step = self._current_step()
        if self.early_stop is None or level + 1 >= len(self.levels):  # the last round trains its ticket fully
            return RoundWatch(current_step=current_step)
        return RoundWatch(self.early_stop, lambda: self._masks_by_pool(self._magnitude, self.levels[level + 1]),
                          self._masks_by_pool(lambda w, s, m: m), current_step, total_steps=total,
                          # θi is taken before a round may stop
                          may_stop=lambda: not self.rewind_point.to_theta_i or self._rewind_state is not None)

    def _shared_dense_round(self, max_steps, max_epochs):
        """Round 0 from :attr:`dense_round`: read back if it holds the round and this run's θi, else trained here
        (taking every snapshot it asks for) and kept there."""
        store, rewind = self.dense_round, self.rewind_point
        steps_of = self.evaluator if isinstance(self.evaluator, RoundEvaluator) else None
        with store.lock():
            if store.holds(rewind):
                result = store.load(self.bound_model, self._start)
                if rewind.to_theta_i:
                    self._rewind_state = store.snapshot(rewind, self.bound_model, self._start)
                if steps_of is not None:  # a step checkpoint of a round 0 killed here is not round 1's
                    steps_of.discard_checkpoint()
                return result
            wanted = {point: self._rewind_step(max_steps, max_epochs, point) for point in store.wanted(rewind)}
            missing = [wanted[point] for point in store.missing(rewind)]
            if steps_of is not None and missing and steps_of.checkpoint_step(max_steps, max_epochs) >= min(missing):
                steps_of.discard_checkpoint()  # resumed past a snapshot the folder lacks: train round 0 from its start
            task = store.capture(wanted, self.bound_model, self._start, self._current_step())
            result = self._train_and_evaluate(0, max_steps, max_epochs, (task,))
            store.save(self.bound_model, result, self._start)
            return result

    # ---- rewinding -----------------------------------------------------------------------------------------
    def _rewind_step(self, max_steps, max_epochs, point: Optional[Rewind] = None) -> int:
        """The step of round 0 whose weights are ``point`` (this run's rewind point if None)."""
        return (point or self.rewind_point).step(self._round_steps(max_steps, max_epochs))

    def _round_steps(self, max_steps, max_epochs) -> Optional[int]:
        """A round's length in optimizer steps, where known (``max_steps``, or the evaluator can tell)."""
        if max_steps is None and isinstance(self.evaluator, RoundEvaluator):
            return self.evaluator.num_training_steps(max_steps, max_epochs)
        return max_steps

    def _snapshot_at(self, step: int) -> Callable[[], None]:
        """An after-optimizer-step task that keeps θ_step. It asks the evaluator which step just finished when
        it can tell (``FineTuner`` can, also in a round resumed from a step checkpoint), else counts calls."""
        counter = {"steps": 0}
        current = self._current_step()

        def task() -> None:
            counter["steps"] += 1
            # >=: a step skipped by a mixed-precision scaler runs no task; the first one after it snapshots
            if (current() if current is not None else counter["steps"]) >= step and self._rewind_state is None:
                self._rewind_state = self._state()
                if self._store is not None:
                    self._store.save_theta_i(self._rewind_state)
        return task

    def _rewind_survivors(self, level: int) -> None:
        """Send the survivors back to the rewind point (θ0 or θi; none in standard pruning), the head as ``head``
        says."""
        if self.rewind_point.standard:
            return
        head = head_names(self.bound_model)
        rewind_params(self.bound_model, self._target_spaces, self._rewind_state,
                      [name for name in self._rewind_state if name not in head or self.head == "rewind"])
        if self.head == "reinit":
            with torch.no_grad():
                self._reinit_head(level)

    def _reinit_head(self, level: int) -> None:
        from .baselines import reinit_parameters_
        torch.manual_seed(level_seed(self.seed, level))
        prefix = base_prefix(self.bound_model)
        body = {id(p) for p in getattr(self.bound_model, prefix.rstrip("."), torch.nn.Module()).parameters()}
        # the architecture's own initialiser, on the head's parameters only (a tied decoder stays with the body)
        reinit_parameters_(self.bound_model, [p for p in self.bound_model.parameters() if prefix and id(p) not in body])

    def _state(self) -> Dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.bound_model.named_parameters()}

    def _ticket_weights(self) -> Optional[Dict[str, torch.Tensor]]:
        """θi tickets carry their rewind weights (the body, keyed relative to it); θ0 tickets need none."""
        if not self.rewind_point.to_theta_i or self._rewind_state is None:
            return None
        prefix, head = base_prefix(self.bound_model), head_names(self.bound_model)
        return {unwrapped_name(n)[len(prefix):]: v for n, v in self._rewind_state.items() if n not in head}

    # ---- the run on disk, saved beside each round (see :class:`~.imp_state.RunStore`) ----------------------------
    def _settings(self) -> Dict[str, Any]:
        """What makes the rounds what they are; a resume under other settings is refused."""
        return {"levels": self.levels, "schedule": self.schedule, "step": self.step, "rewind": self.rewind,
                "head": self.head, "seed": self.seed, "task": self.task, "pruned": self._covered,
                **({"pattern": self.pattern} if self.pattern else {}),
                "base_weights": self._base, "base_body": self._body,
                "early_stop": self.early_stop and self.early_stop.settings()}

    def _state_tensors(self, final: bool):
        return state_tensors(self.bound_model, self._target_spaces, rewind=self.rewind_point,
                             rewind_state=self._rewind_state, base_model=self._base_model, final=final,
                             head0=self._head0)

    def _save(self, level: int) -> None:
        if self._store is not None:
            final = level == len(self.levels) - 1
            if self.rewind_point.to_theta_i and self._rewind_state is not None:
                self._store.keep_theta_i(self._rewind_state)  # the state does not hold θi: it is kept apart
            state, header = self._state_tensors(final)
            self._store.write_round(level, self.tickets[-1], final=final, trajectory=self.trajectory, state=state,
                                    header=header)

    def _resume(self, max_steps, max_epochs) -> int:
        """The first round still to run: after the rounds the store holds, whose model state, masks, trajectory
        and tickets are restored (0 for a new run; a θi taken before a kill in round 0 is read back)."""
        if self._store is None:
            return 0
        saved = self._store.read()
        if saved is None:
            if self.rewind_point.to_theta_i:  # killed in round 0, perhaps after θi was taken
                self._rewind_state = self._store.read_theta_i() or self._rewind_state
            return 0
        if self.rewind_point.to_theta_i and saved.header.get("theta_i") == "apart":
            self._rewind_state = self._theta_i_again(max_steps, max_epochs, saved.state)
        self._rewind_state = restore_state(self.bound_model, self._target_spaces, self.update_masks, saved.state,
                                           saved.header, rewind=self.rewind_point, rewind_state=self._rewind_state,
                                           where=self._store.where)
        self.trajectory, self.tickets = saved.trajectory, saved.tickets
        _log.info("resuming IMP after round %d from %s", len(self.trajectory) - 1, self.output_dir)
        return len(self.trajectory)

    def _theta_i_again(self, max_steps, max_epochs, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """θi for a resumed run, whose state keeps it apart: its file, else the dense round's snapshot, else round 0
        trained again from θ0 up to step i (the same seed, data order and schedule: the same θi on the same kernels;
        a run store carried without its 90 MB θi file resumes so)."""
        kept = self._store.read_theta_i()
        if kept is not None:
            return kept
        if self.dense_round is not None:
            with self.dense_round.lock():
                if self.dense_round.holds(self.rewind_point):
                    return self.dense_round.snapshot(self.rewind_point, self.bound_model, self._start)
        step = self._rewind_step(max_steps, max_epochs)
        head0 = {k[len("start/"):]: v for k, v in state.items() if k.startswith("start/")}
        if set(head0) != set(self._head0):
            raise ValueError(f"{self._store.where} holds neither θi nor the head round 0 started from: delete the "
                             f"folder {self.output_dir} to restart the run, or put its theta_i.safetensors back")
        _log.warning("%s holds no θi: training round 0 again from θ0 up to step %d to take it", self.output_dir, step)
        live = dict(self.bound_model.named_parameters())
        with torch.no_grad():
            for name, value in head0.items():
                live[name].copy_(value)
        if isinstance(self.evaluator, RoundEvaluator):
            self.evaluator.discard_checkpoint()  # a step checkpoint here is a later round's, not round 0's
        seed_round(self.seed, 0)
        self._rewind_state = None

        def stop() -> None:
            if self._rewind_state is not None:
                raise StopTraining(step)
        with self._bound([self._snapshot_at(step), stop]) as evaluator:
            try:
                with quiet_step_patch(evaluator):
                    evaluator.train(max_steps, max_epochs)
            except StopTraining:  # a training loop that lets it through
                pass
        if self._rewind_state is None:
            raise RuntimeError(f"round 0 ended before step {step}: cannot take θi again")
        return self._rewind_state

    def _fuse_preprocess(self, evaluator):
        raise NotImplementedError("IMPPruner runs its own rounds; it cannot be fused with other compressors")
