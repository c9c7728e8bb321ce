"""Interop with ``torch.nn.utils.prune``: the paper's pruning as torch pruning methods, and tickets as torch hooks.

Three :class:`~torch.nn.utils.prune.BasePruningMethod` subclasses, used per module (``Method.apply(module,
"weight", ...)``) or globally (``prune.global_unstructured(parameters, pruning_method=Method, ...)``) like torch's
own, with ``prune.is_pruned``, ``prune.remove`` and ``state_dict`` working as for them:

* :class:`TicketMask`: keep exactly the weights a ticket keeps;
* :class:`RandomGlobal`: random pruning, seeded (as :class:`~nni_bert_tickets.RandomPruner`);
* :class:`GlobalMagnitude`: IMP's pruning step, the lowest-magnitude surviving weights
  (:func:`global_magnitude_step` prunes to an IMP level, a fraction of *all* the weights).

As for torch's unstructured methods, ``amount`` is how many (``int``) or which fraction (``float``) of the entries
handed to the method to prune: in ``global_unstructured`` and on an already pruned tensor, the survivors.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.nn.utils import prune

from . import masks as M
from .targets import prunable_modules, ticket_key
from .ticket import Ticket

__all__ = ["TicketMask", "RandomGlobal", "GlobalMagnitude", "torch_parameters", "global_magnitude_step",
           "install_torch_prune", "remove_torch_prune", "masks_from_torch_prune"]
Parameters = List[Tuple[torch.nn.Module, str]]


class _Method(prune.BasePruningMethod):
    """Refuses, before anything changes, a module without the named parameter or arguments that do not fit it."""
    PRUNING_TYPE = "unstructured"

    @classmethod
    def apply(cls, module: torch.nn.Module, name: str, *args, importance_scores=None, **kwargs):
        _check_parameter(module, name, cls.__name__)
        # checked here: an error inside torch's apply on an already pruned tensor would leave it without its hook
        cls._check_fits(getattr(module, name), _mask(module, name), *args, **kwargs)
        return super().apply(module, name, *args, importance_scores=importance_scores, **kwargs)

    @classmethod
    def _check_fits(cls, tensor: torch.Tensor, mask: torch.Tensor, *args, **kwargs) -> None:
        cls(*args, **kwargs)  # the arguments' own checks


class _Amount(_Method):
    """``amount``: an ``int`` count or a ``float`` fraction in [0, 1) of the entries handed to the method."""

    def __init__(self, amount):
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0 or \
                (isinstance(amount, float) and amount >= 1.0):
            raise ValueError(f"amount must be an int >= 0 or a float in [0, 1), got {amount!r}")
        self.amount = amount

    @classmethod
    def _check_fits(cls, tensor: torch.Tensor, mask: torch.Tensor, amount, *args, **kwargs) -> None:
        cls(amount, *args, **kwargs)._fraction(int(mask.bool().sum()))  # torch hands the method the survivors

    def _fraction(self, n: int) -> float:
        """``amount`` as the fraction of ``n`` entries that :mod:`~nni_bert_tickets.core.masks` prunes (rounded as
        torch rounds, so a count comes back exactly)."""
        if isinstance(self.amount, float):
            return self.amount
        if self.amount >= n:
            raise ValueError(f"amount {self.amount} prunes every one of the {n} entries left; a mask keeps some")
        return self.amount / n if n else 0.0


class TicketMask(_Method):
    """Keep exactly what ``mask`` keeps (True or 1 = kept): a ticket's mask of one matrix per module, or for
    ``global_unstructured`` the masks of its parameters flattened and concatenated in their order.

    >>> TicketMask.apply(module, "weight", mask=ticket.masks["encoder.layer.0.attention.self.query.weight"])
    >>> install_torch_prune(model, ticket)   # every matrix the ticket covers
    """

    def __init__(self, mask: torch.Tensor, whole: bool = False):
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"TicketMask needs the mask as a tensor, got {type(mask).__name__}")
        self.mask = mask.detach().bool()
        if whole:  # per module: handed the whole tensor and its current mask, combined as torch's custom_from_mask
            self.PRUNING_TYPE = "global"

    @classmethod
    def apply(cls, module: torch.nn.Module, name: str, mask: torch.Tensor,  # type: ignore[override]
              importance_scores=None):
        return super().apply(module, name, mask=mask, whole=True, importance_scores=importance_scores)

    @classmethod
    def _check_fits(cls, tensor: torch.Tensor, current: torch.Tensor, mask, *args, **kwargs) -> None:
        if isinstance(mask, torch.Tensor) and tuple(mask.shape) != tuple(tensor.shape):
            raise ValueError(f"TicketMask: the mask has shape {tuple(mask.shape)}, the parameter "
                             f"{tuple(tensor.shape)}: a mask for another matrix or model")
        cls(mask, *args, **kwargs)

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        if t.numel() != self.mask.numel():  # global_unstructured hands over the survivors of pruned parameters
            raise ValueError(f"TicketMask: the mask has {self.mask.numel()} entries, the weights handed to it "
                             f"{t.numel()}: globally, a ticket's mask goes on unpruned parameters (prune.remove "
                             "first, or TicketMask.apply per module, which combines with the current mask)")
        return default_mask * self.mask.reshape(t.shape).to(device=default_mask.device, dtype=default_mask.dtype)


class RandomGlobal(_Amount):
    """Random pruning (the paper's random-pruning row): a uniformly random ``amount`` of the entries, seeded, the
    same mask as :func:`~nni_bert_tickets.random_masks` (and :class:`~nni_bert_tickets.RandomPruner`) gives over
    the same weights in the same order.

    >>> prune.global_unstructured(torch_parameters(model), pruning_method=RandomGlobal, amount=0.7, seed=0)
    """

    def __init__(self, amount, seed: int = 0):
        super().__init__(amount)
        self.seed = int(seed)

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        keep = M.random_masks({"t": t}, self._fraction(t.numel()), seed=self.seed)["t"]
        return default_mask * keep.to(device=default_mask.device, dtype=default_mask.dtype)


class GlobalMagnitude(_Amount):
    """IMP's pruning step: the ``amount`` lowest-magnitude entries (|w|, or ``importance_scores``), by the same
    strategy as :class:`~nni_bert_tickets.IMPPruner` (:func:`~nni_bert_tickets.global_magnitude_masks`).

    >>> global_magnitude_step(torch_parameters(model), 0.2)   # to 20 % of all the weights, survivors only
    """

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        keep = M.global_magnitude_masks({"t": t}, self._fraction(t.numel()))["t"]
        return default_mask * keep.to(device=default_mask.device, dtype=default_mask.dtype)


def torch_parameters(model: torch.nn.Module, pooler: Optional[bool] = None) -> Parameters:
    """The paper's prunable matrices as ``(module, "weight")`` pairs, the ``parameters`` of
    ``prune.global_unstructured``, in ticket order (``pooler`` as in :func:`~nni_bert_tickets.prunable_modules`)."""
    return [(module, "weight") for module in prunable_modules(model, pooler).values()]


def global_magnitude_step(parameters: Sequence[Tuple[torch.nn.Module, str]], sparsity: float) -> int:
    """Prune ``parameters`` together to ``sparsity`` of *all* their weights (an IMP level), removing the
    lowest-magnitude survivors of the current values (``weight_orig * weight_mask``, not the ``weight`` the last
    forward left behind). Returns how many weights this step pruned."""
    parameters = list(parameters)
    for module, name in parameters:
        _check_parameter(module, name, "global_magnitude_step")
    current = {(module, name): _current(module, name) for module, name in parameters}
    total = sum(t.numel() for t in current.values())
    already = sum(int((t == 0).sum()) for t in (_mask(module, name) for module, name in parameters))
    k = M.count_to_prune(total, sparsity) - already
    if k < 0:
        raise ValueError(f"the parameters already prune {already} weights, more than sparsity {sparsity} allows")
    prune.global_unstructured(parameters, pruning_method=GlobalMagnitude, importance_scores=current, amount=k)
    return k


def install_torch_prune(model: torch.nn.Module, ticket: Ticket) -> torch.nn.Module:
    """Attach the ticket with :class:`TicketMask`: each weight becomes ``weight_orig * weight_mask``.
    A ticket for another architecture raises :class:`~nni_bert_tickets.TicketError` before any hook is added;
    as with ``Ticket.apply(strict=False)``, a pooler mask the model lacks is dropped, and matrices the ticket
    does not cover get no hook (they stay dense)."""
    masks = ticket.fit(model, strict=False)
    for name, module in prunable_modules(model).items():
        key = ticket_key(model, name)
        if key in masks:
            TicketMask.apply(module, "weight", mask=masks[key].to(module.weight.device))
    return model


def remove_torch_prune(model: torch.nn.Module) -> torch.nn.Module:
    """Make torch pruning permanent (``prune.remove``): plain ``weight`` parameters with zeros baked in."""
    for module in prunable_modules(model).values():
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")
    return model


def masks_from_torch_prune(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The ``weight_mask`` buffers of a torch-pruned model as ticket masks (by ticket key)."""
    return {ticket_key(model, name): module.weight_mask.bool() for name, module in prunable_modules(model).items()
            if hasattr(module, "weight_mask")}


def _check_parameter(module: torch.nn.Module, name: str, who: str) -> None:
    """A clear error unless ``module`` has a parameter ``name`` (plain, or already pruned: ``name_orig``)."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{who}: expected a torch.nn.Module, got {type(module).__name__}")
    has = [n for n, _ in module.named_parameters(recurse=False)]
    if name not in has and f"{name}_orig" not in has:
        raise AttributeError(f"{who}: {type(module).__name__} has no parameter {name!r} to prune (its parameters: "
                             f"{has or 'none'})")


def _mask(module: torch.nn.Module, name: str) -> torch.Tensor:
    """The parameter's current torch pruning mask, ones where it is not pruned."""
    mask = getattr(module, f"{name}_mask", None)
    return mask if mask is not None else torch.ones_like(getattr(module, name))


def _current(module: torch.nn.Module, name: str) -> torch.Tensor:
    """The parameter's current value: ``name_orig * name_mask`` where pruned (``module.name`` is only refreshed by
    the next forward)."""
    if hasattr(module, f"{name}_orig"):
        return (getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask")).detach()
    return getattr(module, name).detach()
