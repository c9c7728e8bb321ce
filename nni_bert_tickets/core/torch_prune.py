"""Interop with ``torch.nn.utils.prune``: install a ticket as torch pruning hooks, read one back, remove."""
from __future__ import annotations

import torch
from torch.nn.utils import prune

from .targets import prunable_modules, ticket_key
from .ticket import Ticket

__all__ = ["install_torch_prune", "remove_torch_prune", "masks_from_torch_prune"]


def install_torch_prune(model: torch.nn.Module, ticket: Ticket) -> torch.nn.Module:
    """Attach the ticket with ``prune.custom_from_mask``: each weight becomes ``weight_orig * weight_mask``.
    A ticket for another architecture raises :class:`~nni_bert_tickets.TicketError` before any hook is added;
    as with ``Ticket.apply(strict=False)``, a pooler mask the model lacks is dropped, and matrices the ticket
    does not cover get no hook (they stay dense)."""
    masks = ticket.fit(model, strict=False)
    for name, module in prunable_modules(model).items():
        key = ticket_key(model, name)
        if key in masks:
            prune.custom_from_mask(module, "weight", masks[key].to(module.weight.device))
    return model


def remove_torch_prune(model: torch.nn.Module) -> torch.nn.Module:
    """Make torch pruning permanent (``prune.remove``): plain ``weight`` parameters with zeros baked in."""
    for module in prunable_modules(model).values():
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")
    return model


def masks_from_torch_prune(model: torch.nn.Module) -> dict:
    """The ``weight_mask`` buffers of a torch-pruned model as ticket masks (by ticket key)."""
    return {ticket_key(model, name): module.weight_mask.bool() for name, module in prunable_modules(model).items()
            if hasattr(module, "weight_mask")}
