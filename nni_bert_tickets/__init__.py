"""Lottery tickets for pre-trained BERT networks (Chen et al., NeurIPS 2020), native to NNI 3."""
from ._version import __version__

from .core.targets import bert_config_list, prunable_modules
from .core.masks import global_magnitude_masks, random_masks, sparsity_schedule
from .core.ticket import Ticket, TicketError, prunable_weights
from .core.pruners import IMPPruner, RandomPruner
from .core.early_stop import EarlyStop
from .core.baselines import one_shot_magnitude_ticket, random_ticket, reinitialize, shuffle_weights
from .core.baseline_pruners import ReinitPruner, ShuffledPruner, mask_config_list
from .core.torch_prune import (GlobalMagnitude, RandomGlobal, TicketMask, global_magnitude_step, install_torch_prune,
                               masks_from_torch_prune, remove_torch_prune, torch_parameters)
from .core.torch_imp import torch_imp
from .core.architectures import ArchitectureError, register_architecture

__all__ = [
    "__version__", "bert_config_list", "prunable_modules", "ArchitectureError", "register_architecture",
    "global_magnitude_masks", "random_masks", "sparsity_schedule", "Ticket", "TicketError", "prunable_weights",
    "IMPPruner", "RandomPruner", "EarlyStop",
    "one_shot_magnitude_ticket", "random_ticket", "reinitialize", "shuffle_weights",
    "ReinitPruner", "ShuffledPruner", "mask_config_list",
    "install_torch_prune", "masks_from_torch_prune", "remove_torch_prune",
    "TicketMask", "RandomGlobal", "GlobalMagnitude", "torch_parameters", "global_magnitude_step", "torch_imp",
]
