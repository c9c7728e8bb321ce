"""Lottery tickets for pre-trained BERT networks (Chen et al., NeurIPS 2020), native to NNI 3."""
from ._version import __version__

from .core.targets import bert_config_list, prunable_modules
from .core.masks import global_magnitude_masks, random_masks, sparsity_schedule
from .core.ticket import Ticket, TicketError, prunable_weights
from .core.pruners import IMPPruner, RandomPruner
from .core.early_stop import EarlyStop
from .core.baselines import one_shot_magnitude_ticket, random_ticket, reinitialize, shuffle_weights
from .core.torch_prune import install_torch_prune, masks_from_torch_prune, remove_torch_prune
from .core.architectures import ArchitectureError, register_architecture

__all__ = [
    "__version__", "bert_config_list", "prunable_modules", "ArchitectureError", "register_architecture",
    "global_magnitude_masks", "random_masks", "sparsity_schedule", "Ticket", "TicketError", "prunable_weights",
    "IMPPruner", "RandomPruner", "EarlyStop",
    "one_shot_magnitude_ticket", "random_ticket", "reinitialize", "shuffle_weights",
    "install_torch_prune", "masks_from_torch_prune", "remove_torch_prune",
]
