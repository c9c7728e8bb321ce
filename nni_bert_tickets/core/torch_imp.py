"""IMP with rewinding for plain torch: :class:`~nni_bert_tickets.IMPPruner`'s rounds on a model pruned through
``torch.nn.utils.prune``, no NNI API involved.

Each round trains the current subnetwork with the caller's function, evaluates it, prunes the lowest-magnitude
surviving weights globally to the next sparsity of the schedule (:func:`~.torch_prune.global_magnitude_step`),
and rewinds the survivors, held in each matrix's ``weight_orig``, to θ0. On the same model, training, schedule
and seed its masks are :class:`~nni_bert_tickets.IMPPruner`'s, and its tickets the same :class:`Ticket` files.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple

import torch
from torch.nn.utils import prune

from . import masks as M
from .imp_state import ticket_file
from .seeding import seed_round
from .targets import base_prefix, prunable_modules
from .ticket import Ticket, prunable_weights
from .torch_prune import global_magnitude_step, masks_from_torch_prune

__all__ = ["torch_imp"]
_log = logging.getLogger(__name__)


def torch_imp(model: torch.nn.Module, train: Callable[[torch.nn.Module], Any], sparsity: float, *,
              evaluate: Optional[Callable[[torch.nn.Module], Any]] = None,
              schedule: Literal["linear", "geometric"] = "linear", step: float = 0.1, rewind: Optional[int] = 0,
              head: Literal["keep", "rewind"] = "keep", seed: int = 0, pooler: Optional[bool] = None,
              task: Optional[str] = None, output_dir: Optional[str] = None,
              ticket_meta: Optional[Dict[str, Any]] = None) -> List[Ticket]:
    """Find a lottery ticket at ``sparsity`` by IMP on ``model`` through ``torch.nn.utils.prune``; one
    :class:`Ticket` per round (round 0 dense), in order.

    ``train(model)`` trains the model in place for one round and builds its own optimizer and LR schedule each
    call (as :class:`~nni_bert_tickets.IMPPruner` builds fresh ones every round); each round is seeded first with
    ``seed`` as IMPPruner seeds it. ``evaluate(model)`` (optional) returns a number, a dict with ``'default'``,
    or ``(number, dict)``, as an NNI evaluating function. ``schedule`` and ``step`` as IMPPruner's; ``rewind`` is
    ``0`` (θ0: every body parameter goes back to the model's values at the call) or ``None`` (standard pruning:
    keep the trained weights); ``head`` (parameters outside the body) is ``'keep'`` (trained values carried, the
    reference code) or ``'rewind'``. ``pooler`` chooses the pruned set as in :func:`~nni_bert_tickets.bert_config_list`.
    ``output_dir``: each round's ticket is written there under :func:`~.imp_state.ticket_file`'s name, as
    IMPPruner names them (this driver does not resume a killed run; IMPPruner does).

    The model is left pruned through torch (``weight_orig`` trained, ``weight_mask`` the last ticket's):
    :func:`~nni_bert_tickets.remove_torch_prune` makes it plain.
    """
    if not callable(train) or not (evaluate is None or callable(evaluate)):
        raise TypeError("torch_imp needs train(model) (and evaluate(model), if given) as functions")
    levels = [0.0] + M.sparsity_schedule(sparsity, schedule, step)  # checks sparsity, schedule and step
    if rewind is not None and (isinstance(rewind, bool) or rewind != 0):
        raise ValueError(f"torch_imp rewinds to θ0 (rewind=0) or not at all (rewind=None), got {rewind!r}; "
                         "rewinding to θi (k steps into training) needs IMPPruner")
    if head not in ("keep", "rewind"):
        raise ValueError(f"head must be 'keep' or 'rewind', got {head!r}")
    modules = prunable_modules(model, pooler)
    pruned = [name for name, module in modules.items() if prune.is_pruned(module) or hasattr(module, "weight_orig")]
    if pruned:
        raise ValueError(f"{pruned[:3]} are already pruned through torch.nn.utils.prune: IMP starts from the dense "
                         "model (remove_torch_prune(model) first)")

    theta0 = {name: p.detach().clone() for name, p in model.named_parameters()}
    theta0_prunable = {key: w.detach().clone() for key, w in prunable_weights(model).items()}
    prefix = base_prefix(model)
    kept = {name for name in theta0 if prefix and not name.startswith(prefix) and head == "keep"}
    for module in modules.values():  # pruned through torch from the start: the parameters stay the same all run
        prune.identity(module, "weight")
    named = dict(model.named_parameters())
    live = {name: named[name] if name in named else named[f"{name}_orig"] for name in theta0}
    parameters = [(module, "weight") for module in modules.values()]
    meta = {"task": task, "algorithm": "imp" if rewind is not None else "standard", "schedule": f"{schedule}:{step}",
            "seed": seed, "rewind": "theta0" if rewind is not None else "none", **(ticket_meta or {})}

    tickets: List[Ticket] = []
    for level, target in enumerate(levels):
        _log.info("IMP (torch) round %d/%d at sparsity %.4f", level, len(levels) - 1, target)
        seed_round(seed, level)
        train(model)
        model.zero_grad(set_to_none=True)
        metric, metrics = _evaluate(evaluate, model)
        tickets.append(Ticket.from_model(model, masks_from_torch_prune(model), base_weights=theta0_prunable,
                                         round=level, metrics={"metric": metric, **metrics}, **meta))
        if output_dir:
            os.makedirs(output_dir, exist_ok=True)
            tickets[-1].save(os.path.join(output_dir, ticket_file(level)))
        if level + 1 < len(levels):
            global_magnitude_step(parameters, levels[level + 1])
            _rewind(modules, live, {} if rewind is None else {n: v for n, v in theta0.items() if n not in kept})
    return tickets


def _rewind(modules: Dict[str, torch.nn.Module], live: Dict[str, torch.Tensor],
            values: Dict[str, torch.Tensor]) -> None:
    """Copy ``values`` into the live parameters (a pruned matrix's into its ``weight_orig``), then zero every pruned
    weight in ``weight_orig``, so the survivors are all it holds."""
    with torch.no_grad():
        for name, value in values.items():
            live[name].copy_(value)
        for module in modules.values():
            module.weight_orig.masked_fill_(~module.weight_mask.bool(), 0.0)
    for module in modules.values():  # what the next forward would compute, as prune's own apply leaves it
        module.weight = module.weight_orig * module.weight_mask


def _evaluate(evaluate, model: torch.nn.Module) -> Tuple[Optional[float], Dict[str, Any]]:
    """NNI's convention: a number, a dict with ``'default'``, or ``(number, dict)``."""
    if evaluate is None:
        return None, {}
    result = evaluate(model)
    if isinstance(result, tuple):
        metric, metrics = result
    elif isinstance(result, dict):
        if "default" not in result:
            raise ValueError(f"evaluate returned a dict without 'default' (keys {sorted(result)[:5]})")
        metric, metrics = result["default"], result
    else:
        metric, metrics = result, {}
    return (None if metric is None else float(metric)), dict(metrics or {})
